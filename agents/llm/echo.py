"""The `echo` provider: offline and deterministic, for demos, tests and load.

Its answer is `[<agent>] <input>`. At a node that chooses an action, an answer whose last line is
not `ACTION: <one of the node's actions>` gets `ACTION: <the first action>` appended, so an input
ending in `ACTION: revise` steers the graph without a model. It streams the answer word by word,
spreading STORYFLOW_ECHO_DELAY over the words, and counts one token per whitespace-separated word.
"""

from __future__ import annotations

import asyncio
import re

from agents.llm import Completion, OnText, Prompt

MODEL = "echo"
ACTION_LINE = re.compile(r"^ACTION:\s*(\S+)\s*$")


def count_tokens(text: str) -> int:
    return len(text.split())


def echo_answer(prompt: Prompt) -> str:
    answer = f"[{prompt.agent}] {prompt.user}"
    if prompt.actions:
        last = ACTION_LINE.match(answer.rsplit("\n", 1)[-1].strip())
        if last is None or last.group(1) not in prompt.actions:
            answer += f"\nACTION: {prompt.actions[0]}"
    return answer


def pieces(text: str) -> list[str]:
    """The text cut after each run of whitespace: word by word, and joined they give the text back."""
    return re.findall(r"\S*\s*", text)[:-1] or [text]


class EchoLLM:
    provider = "echo"
    model = MODEL

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay

    async def complete(self, prompt: Prompt, on_text: OnText | None = None) -> Completion:
        answer = echo_answer(prompt)
        words = pieces(answer)
        for word in words:
            if self.delay:
                await asyncio.sleep(self.delay / len(words))
            if on_text is not None:
                await on_text(word, False)
        used = count_tokens(prompt.system) + count_tokens(prompt.user)
        return Completion(answer, prompt_tokens=used, completion_tokens=count_tokens(answer), model=MODEL)

    async def aclose(self) -> None:
        return None
