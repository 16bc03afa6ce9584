"""The agent node: an AsyncNode with a name, the documents it needs, and a prompt."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from pocketflow import AsyncNode

from agents.llm import LLMClient, Prompt
from memory.manager import AgentMemory


@dataclass(frozen=True)
class AgentTask:
    """What an agent's exec needs, prepared from the shared store."""

    input: str
    system: str


class Agent(AsyncNode):  # type: ignore[misc]
    name: ClassVar[str]
    requires_docs: ClassVar[tuple[str, ...]] = ()
    prompt: ClassVar[str]
    memory_key: ClassVar[str | None] = None  # story-scope key this agent's output is remembered under

    def __init__(self, llm: LLMClient) -> None:
        # No retries here: the LLM client retries transient failures (one layer, honouring Retry-After).
        super().__init__(max_retries=1)
        self.llm = llm

    async def prep_async(self, shared: dict[str, Any]) -> AgentTask:
        await shared["tracker"].node_started(self.name)
        memory: AgentMemory = shared["memory"].for_agent(self.name)
        docs = {doc_id: shared["docs"][doc_id] for doc_id in self.requires_docs}
        return AgentTask(input=shared["current"], system=self.system_prompt(docs, memory))

    async def exec_async(self, prep_res: AgentTask) -> str:
        completion = await self.llm.complete(Prompt(self.name, prep_res.system, prep_res.input))
        return completion.text

    async def post_async(self, shared: dict[str, Any], prep_res: AgentTask, exec_res: str) -> None:
        memory: AgentMemory = shared["memory"].for_agent(self.name)
        memory.own.set("runs", int(memory.own.get("runs", 0)) + 1)
        memory.own.set("last_output", exec_res)
        self.remember(memory, exec_res)
        shared["outputs"][self.name] = exec_res
        shared["current"] = exec_res
        await shared["tracker"].node_finished(self.name, exec_res)

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
