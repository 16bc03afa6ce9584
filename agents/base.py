"""The nodes of a flow: an agent (an AsyncNode with a name, the documents it needs and a prompt),
a human step, and the end.

An agent reads what it needs from its run's context in `prep_async`, calls the LLM in `exec_async`
(which sees only what prep handed it), and reports in `post_async`, whose return value is the
action PocketFlow follows: the one the agent chose at a node with `on:`, else "default".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar

from pocketflow import AsyncNode

from agents.context import Step, StepFailed, run_context
from agents.graph import NodeSpec
from agents.llm import Completion, LLMClient, OnText, Prompt
from memory.manager import AgentMemory

ACTION_LINE = re.compile(r"^ACTION:\s*(\S+)\s*$")


@dataclass(frozen=True)
class AgentTask:
    """What an agent's exec needs, prepared from its run's context."""

    input: str
    system: str
    step: Step | None = None  # None in unit tests of exec alone
    actions: tuple[str, ...] = ()


@dataclass(frozen=True)
class AgentAnswer:
    output: str
    action: str | None = None


def split_action(text: str, actions: tuple[str, ...]) -> tuple[str, str | None]:
    """The answer without its last line `ACTION: <key>`, and the key; (text, None) if there is no valid one."""
    body, _, last = text.rstrip().rpartition("\n")
    found = ACTION_LINE.match(last.strip())
    if found is None or found.group(1) not in actions:
        return text, None
    return body.rstrip("\n"), found.group(1)


def action_instruction(actions: tuple[str, ...]) -> str:
    return f"End your answer with a last line `ACTION: <one of {', '.join(actions)}>`, choosing what comes next."


class Agent(AsyncNode):  # type: ignore[misc]
    name: ClassVar[str]
    requires_docs: ClassVar[tuple[str, ...]] = ()
    prompt: ClassVar[str]
    memory_key: ClassVar[str | None] = None  # story-scope key this agent's output is remembered under

    def __init__(self, llm: LLMClient, node: NodeSpec | None = None) -> None:
        # No retries here: the LLM client retries transient failures (one layer, honouring Retry-After).
        super().__init__(max_retries=1)
        self.llm = llm
        self.node = node or NodeSpec(self.name, self.name)

    async def prep_async(self, shared: dict[str, Any]) -> AgentTask:
        run = run_context(shared)
        step = await run.step_started(self.node)
        docs = {doc_id: run.document(doc_id) for doc_id in self.requires_docs}
        system = self.system_prompt(docs, run.memory(self.name))
        actions = tuple(self.node.actions)
        if actions:
            system += "\n\n" + action_instruction(actions)
        return AgentTask(input=step.input, system=system, step=step, actions=actions)

    async def exec_async(self, prep_res: AgentTask) -> AgentAnswer:
        completion = await self._ask(prep_res, prep_res.system, restart=False)
        if not prep_res.actions:
            return AgentAnswer(completion.text)
        output, action = split_action(completion.text, prep_res.actions)
        if action is None:  # asked once more, with the rule repeated
            rule = action_instruction(prep_res.actions)
            reminder = f"{prep_res.system}\n\nYour last answer had no valid action line. {rule}"
            output, action = split_action((await self._ask(prep_res, reminder, restart=True)).text, prep_res.actions)
        if action is None:
            raise StepFailed(
                "invalid_action", f"{self.node.name}: no `ACTION: <{'|'.join(prep_res.actions)}>` line, twice"
            )
        return AgentAnswer(output, action)

    async def _ask(self, task: AgentTask, system: str, *, restart: bool) -> Completion:
        on_text: OnText | None = None
        if task.step is not None:
            on_text = _restarting(task.step.on_text) if restart else task.step.on_text
        completion = await self.llm.complete(Prompt(self.name, system, task.input, task.actions), on_text)
        if task.step is not None:
            task.step.on_usage(completion)
        return completion

    async def post_async(self, shared: dict[str, Any], prep_res: AgentTask, exec_res: AgentAnswer | str) -> str:
        """`exec_res`: the AgentAnswer, or (an agent that overrides exec_async) just the output text."""
        answer = exec_res if isinstance(exec_res, AgentAnswer) else AgentAnswer(exec_res)
        run = run_context(shared)
        memory = run.memory(self.name)
        memory.own.set("runs", int(memory.own.get("runs", 0)) + 1)
        memory.own.set("last_output", answer.output)
        self.remember(memory, answer.output)
        await run.step_finished(self.node, answer.output, answer.action)
        return answer.action or "default"

    def system_prompt(self, docs: dict[str, str], memory: AgentMemory) -> str:
        parts = [self.prompt]
        parts += [f"## Document {doc_id}\n{content}" for doc_id, content in docs.items()]
        story = memory.story.snapshot()
        if story:
            known = "\n".join(f"- {key}: {value}" for key, value in story.items())
            parts.append(f"## What the team knows about this story\n{known}")
        return "\n\n".join(parts)

    def remember(self, memory: AgentMemory, output: str) -> None:
        """Write what later agents and later runs of the story should know; override for more."""
        if self.memory_key:
            memory.story.set(self.memory_key, output)


def _restarting(on_text: OnText) -> OnText:
    """`on_text`, with the first piece marked as a restart: the text streamed so far is void."""
    first = True

    async def forward(text: str, restart: bool) -> None:
        nonlocal first
        await on_text(text, restart or first)
        first = False

    return forward


class HumanStep(AsyncNode):  # type: ignore[misc]
    """A node where a person chooses the action (POST /run/{id}/input); the run waits, holding no worker."""

    def __init__(self, node: NodeSpec) -> None:
        super().__init__(max_retries=1)
        self.node = node

    async def prep_async(self, shared: dict[str, Any]) -> None:
        await run_context(shared).await_input(self.node)


class End(AsyncNode):  # type: ignore[misc]
    """Where an `on:` edge to `~` leads: nothing, so the flow ends without PocketFlow's warning."""
