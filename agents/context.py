"""The whole interface between an agent and the run it is part of: what it may read, what it may report.

An agent node gets its run's context from PocketFlow's shared store with `run_context(shared)`,
reads in `prep_async` and reports in `post_async`; `exec_async` (the LLM call) sees only what
`prep_async` handed it. The worker implements `RunContext` (worker/executor.py); tests may give a
fake of their own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

from agents.graph import NodeSpec
from agents.llm import Completion, OnText
from memory.manager import AgentMemory

SHARED_KEY = "run"


class RunInterrupted(Exception):
    """This attempt no longer owns its run (lease lost to another worker, or cancelled).

    Raised by the context's report methods. An agent must let it propagate: the attempt stops and
    writes nothing more; whoever owns the run now carries on from its last checkpoint.
    """


class AwaitInput(Exception):
    """Raised by `RunContext.await_input`: the run stops here until a person answers; the worker parks it."""

    def __init__(self, node: str, question: str, actions: list[str]) -> None:
        super().__init__(f"node {node!r} awaits a person's answer")
        self.node, self.question, self.actions = node, question, actions


class StepFailed(Exception):
    """The run cannot go on from this step; `error_type` becomes the record's `error.type`."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type


@dataclass(frozen=True)
class Step:
    """One visit of a node, as it starts."""

    node: str
    visit: int
    input: str  # the previous step's output, or the run's input for the first step
    on_text: OnText  # where the LLM's answer streams to (the run's token events)
    on_usage: Callable[[Completion], None]  # report each LLM call that returned


class RunContext(Protocol):
    job_id: str
    story_id: str
    flow: str
    input: str  # the run's own input

    def document(self, doc_id: str) -> str:
        """A document the flow requires, as it was when the run started."""
        ...

    def memory(self, agent: str) -> AgentMemory:
        """The story scope and the agent's own scope, with this run's earlier writes applied."""
        ...

    async def step_started(self, node: NodeSpec) -> Step:
        """Announce a visit of `node`. StepFailed("max_visits") past its limit; RunInterrupted.

        `Step.on_usage` raises StepFailed("budget_exceeded") once the run's tokens pass STORYFLOW_MAX_RUN_TOKENS.
        """
        ...

    async def step_finished(self, node: NodeSpec, output: str, action: str | None = None) -> None:
        """The step's output and the action it chose; checkpointed before the next step starts."""
        ...

    async def await_input(self, node: NodeSpec) -> NoReturn:
        """A visit of a human node: raises AwaitInput, and the run waits for a person's answer."""
        ...


def run_context(shared: dict[str, Any]) -> RunContext:
    context: RunContext = shared[SHARED_KEY]
    return context
