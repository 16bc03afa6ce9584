"""The worker's side of agents/context.py: one attempt's view of its run, and its checkpoints.

Everything a step reports stays here until the next step starts; then one fenced script writes
the finished step (its output, usage and the run's pending memory writes, as the checkpoint), the
progress and the events, and announces the new step. The last step's report travels with the
commit, a human step's with the pause. So a run costs one round trip per step, and a new attempt
resumes after the last finished step.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, NoReturn

from redis.exceptions import RedisError

from agents.context import AwaitInput, RunInterrupted, Step, StepFailed
from agents.graph import FlowGraph, NodeSpec
from agents.llm import Completion
from infra.metrics import LocalMetrics
from infra.settings import Settings
from infra.timeutil import now_iso, now_ms
from memory.manager import AgentMemory, MemoryManager
from memory.store import encode_memory_writes
from runs.checkpoint import PREVIEW_CHARS, Checkpoint, digest, outputs_of, progress_of
from runs.model import Attempt, Event, RunStatus
from runs.store import Begun, RunStore

FLUSH_CHUNK = 100  # steps' token events per round trip


class TokenFlusher:
    """One per worker process: every STORYFLOW_TOKEN_FLUSH_MS, the token events every streaming step
    has gathered go to Redis in one pipeline: a thousand runs streaming at once cost one round trip
    per interval, not a thousand."""

    def __init__(self, store: RunStore, flush_s: float) -> None:
        self.store, self.flush_s = store, flush_s
        self.waiting: dict[TokenSink, None] = {}  # sinks with events to send, in order
        self.sending: asyncio.Task[None] | None = None  # the round trip under way
        self._timer: asyncio.Task[None] | None = None

    def wake(self, sink: TokenSink) -> None:
        self.waiting[sink] = None
        if self._timer is None:
            self._timer = asyncio.create_task(self._flush_later())

    async def _flush_later(self) -> None:
        await asyncio.sleep(self.flush_s)
        previous = self.sending
        if previous is not None:  # one round trip at a time, so a stream's events keep their order
            with contextlib.suppress(RedisError, OSError):
                await asyncio.shield(previous)
        self._timer = None
        batches = [(sink.attempt, sink.take()) for sink in self.waiting]
        self.waiting.clear()
        self.sending = asyncio.current_task()
        batches = [batch for batch in batches if batch[1]]
        try:
            # Tokens are a view of work in progress; losing some to an outage loses no state (the output is kept).
            with contextlib.suppress(RedisError, OSError):
                for start in range(0, len(batches), FLUSH_CHUNK):  # the loop stays free between chunks
                    await self.store.stream_tokens(batches[start : start + FLUSH_CHUNK])
        finally:
            if self.sending is asyncio.current_task():
                self.sending = None

    async def settled(self, sink: TokenSink) -> None:
        """The sink's events already handed over are in Redis (or lost to an outage)."""
        self.waiting.pop(sink, None)
        if self.sending is not None and self.sending is not asyncio.current_task():
            with contextlib.suppress(RedisError, OSError):
                await asyncio.shield(self.sending)


class TokenSink:
    """A step's streamed answer as `token` events, coalesced: one event per STORYFLOW_TOKEN_FLUSH_MS.

    At a node that chooses an action, the last line is held back until the answer is complete, so
    the `ACTION:` line never reaches the stream; then the rest is sent, and the events of a visit
    always join up to exactly its output. What is left when the step ends travels with the step's
    report.
    """

    def __init__(self, flusher: TokenFlusher, attempt: Attempt, node: str, hold_last_line: bool) -> None:
        self.flusher, self.attempt, self.node = flusher, attempt, node
        self.hold_last_line = hold_last_line
        self.received = ""  # the answer so far, as the model sent it
        self.queued = 0  # how much of `received` is sent or about to be
        self.pending: list[Event] = []
        self._restart = False

    async def write(self, text: str, restart: bool) -> None:
        if restart:
            self.received, self.queued, self._restart = "", 0, True
        self.received += text
        # At a node that chooses an action, the line break before the last line waits with it: the output
        # ends before it once the ACTION line is taken off.
        end = self.received.rfind("\n") if self.hold_last_line else len(self.received)
        if end > self.queued:
            self._queue(self.received[self.queued : end])
            self.queued = end
        if self.pending:
            self.flusher.wake(self)

    def take(self) -> list[Event]:
        events, self.pending = _coalesce(self.pending), []
        return events

    async def finish(self, output: str) -> list[Event]:
        """The step's output is known: the token events the stream has not had yet, to send with the
        step's report (after any flush under way, so the stream keeps their order)."""
        sent = self.received[: self.queued]
        if output.startswith(sent):
            self._queue(output[len(sent) :])
        else:
            self._restart = True
            self._queue(output)
        await self.flusher.settled(self)
        return self.take()

    def _queue(self, text: str) -> None:
        if not text:
            return
        data: dict[str, Any] = {"node": self.node, "text": text}
        if self._restart:
            data["restart"] = True
            self._restart = False
        self.pending.append(("token", data))


def _coalesce(events: list[Event]) -> list[Event]:
    """Adjacent token events in one, unless one says the text before it is void."""
    merged: list[Event] = []
    for name, data in events:
        if merged and not data.get("restart"):
            merged[-1][1]["text"] += data["text"]
        else:
            merged.append((name, dict(data)))
    return merged


class WorkerRunContext:
    """A RunContext (agents/context.py) for one attempt of a run."""

    def __init__(
        self, settings: Settings, store: RunStore, begun: Begun, graph: FlowGraph, docs: dict[str, str],
        memory: MemoryManager, metrics: LocalMetrics, model: str, tokens: TokenFlusher,
    ) -> None:  # fmt: skip
        self.settings, self.store, self.graph, self.metrics, self.model = settings, store, graph, metrics, model
        self.tokens = tokens
        self.attempt = begun.attempt
        self.job_id, self.story_id, self.flow, self.input = (
            self.attempt.job_id,
            self.attempt.story_id,
            self.attempt.flow,
            self.attempt.input,
        )
        self.docs = docs
        self._memory = memory
        self.resumed = begun.checkpoint is not None
        self.checkpoint = (
            Checkpoint.from_json(begun.checkpoint) if begun.checkpoint else Checkpoint(graph.start, self.input)
        )
        memory.restore(self.checkpoint.memory)
        self.steps = [step for step in begun.steps if not (self.resumed and step["status"] == "running")]
        self.trail = begun.trail
        self.usage = begun.usage
        self.total = begun.progress["total"] if begun.progress else len(graph.nodes)
        # BEGIN announced a fresh run's first step: its `steps` entry and node_started are written.
        self.announced = None if self.resumed else graph.start
        self.unsent: list[Event] = []
        self.sinks: dict[str, TokenSink] = {}
        self.step_usage: dict[str, int] = {}
        self.step_started_at = 0.0

    # --- what an agent may read -------------------------------------------------------------

    def document(self, doc_id: str) -> str:
        return self.docs[doc_id]

    def memory(self, agent: str) -> AgentMemory:
        return self._memory.for_agent(agent)

    def check_documents(self) -> None:
        """A resumed run sees the documents it started with, or fails saying which changed (see README)."""
        if not self.checkpoint.docs:
            self.checkpoint.docs = {doc_id: digest(content) for doc_id, content in self.docs.items()}
            return
        changed = sorted(d for d, pinned in self.checkpoint.docs.items() if digest(self.docs.get(d, "")) != pinned)
        if changed:
            raise StepFailed(
                "documents_changed",
                f"documents changed since the run started: {', '.join(changed)}; retry the run to use them",
            )

    # --- what an agent may report -------------------------------------------------------------

    async def step_started(self, node: NodeSpec) -> Step:
        visit = self._visit(node)
        self.step_usage = {"prompt_tokens": 0, "completion_tokens": 0}
        self.step_started_at = time.monotonic()
        sink = TokenSink(self.tokens, self.attempt, node.name, bool(node.on))
        self.sinks[node.name] = sink
        if self.announced == node.name and len(self.steps) == 1:
            self.announced = None  # BEGIN wrote this step's start
        else:
            self.announced = None
            self.steps.append(self._running_step(node, visit))
            await self._write(("node_started", {"node": node.name}))
        return Step(node.name, visit, self.checkpoint.current, sink.write, self._on_usage)

    async def step_finished(self, node: NodeSpec, output: str, action: str | None = None) -> None:
        self.unsent += await self.sinks.pop(node.name).finish(output)
        step = self.steps[-1]
        step.update(status="complete", output=output, action=action, finished_at=now_iso(), usage=self.step_usage)
        self.checkpoint.current = output
        self.checkpoint.next = _following(node, action)
        self.checkpoint.memory = self._memory.pending()
        seconds = time.monotonic() - self.step_started_at
        self.metrics.observe("storyflow_node_duration_seconds", seconds, flow=self.flow, node=node.name)
        event: dict[str, Any] = {"node": node.name, "preview": output[:PREVIEW_CHARS]}
        if action is not None:
            event["action"] = action
        self.unsent.append(("node_finished", event))

    async def await_input(self, node: NodeSpec) -> NoReturn:
        visit = self._visit(node)
        self.steps.append(self._running_step(node, visit))
        raise AwaitInput(node.name, node.human or "", node.actions)

    def _on_usage(self, completion: Completion) -> None:
        prompt, answer = completion.prompt_tokens, completion.completion_tokens
        self.step_usage["prompt_tokens"] += prompt
        self.step_usage["completion_tokens"] += answer
        agent = self.steps[-1]["agent"]
        usage = self.usage
        usage["prompt_tokens"] += prompt
        usage["completion_tokens"] += answer
        usage["total_tokens"] += prompt + answer
        usage["calls"] += 1
        mine = usage["by_agent"].setdefault(agent, {"prompt_tokens": 0, "completion_tokens": 0, "calls": 0})
        mine["prompt_tokens"] += prompt
        mine["completion_tokens"] += answer
        mine["calls"] += 1
        price = self.settings.llm_prices.get(completion.model)
        if price is not None:
            cost = (prompt * price.input + answer * price.output) / 1_000_000
            usage["cost_usd"] = round((usage["cost_usd"] or 0.0) + cost, 8)
        for kind, tokens in (("prompt", prompt), ("completion", answer)):
            labels = {"provider": self.settings.llm_provider, "model": completion.model, "agent": agent, "kind": kind}
            self.metrics.inc("storyflow_llm_tokens_total", tokens, **labels)
        budget = self.settings.max_run_tokens
        if budget and usage["total_tokens"] > budget:
            raise StepFailed(
                "budget_exceeded",
                f"the run used {usage['total_tokens']} tokens, over STORYFLOW_MAX_RUN_TOKENS={budget}",
            )

    # --- what the executor does with it ------------------------------------------------------

    def _visit(self, node: NodeSpec) -> int:
        visit = self.checkpoint.visits.get(node.name, 0) + 1
        if visit > node.max_visits:
            raise StepFailed("max_visits", f"node {node.name!r} would be visited more than {node.max_visits} times")
        self.trail.append(self.checkpoint.to_json())
        self.checkpoint.visits[node.name] = visit
        self.checkpoint.next = node.name
        return visit

    def _running_step(self, node: NodeSpec, visit: int) -> dict[str, Any]:
        return {
            "node": node.name, "agent": node.agent, "visit": visit, "attempt": self.attempt.number,
            "status": "running", "action": None, "output": None, "started_at": now_iso(), "finished_at": None,
            "usage": None,
        }  # fmt: skip

    def _state(self, current: str | None) -> dict[str, Any]:
        return {
            "steps": self.steps, "checkpoint": self.checkpoint.to_json(), "trail": self.trail, "usage": self.usage,
            "progress": progress_of(self.steps, self.total, current), "outputs": outputs_of(self.steps),
        }  # fmt: skip

    async def _write(self, *events: Event) -> None:
        sent, self.unsent = [*self.unsent, *events], []
        current = self.steps[-1]["node"] if self.steps and self.steps[-1]["status"] == "running" else None
        if not await self.store.progress(self.attempt, self._state(current), sent):
            raise RunInterrupted(self.job_id)

    async def commit(self) -> bool:
        fields = {
            **self._state(None), "status": RunStatus.COMPLETE, "finished_at": now_iso(),
            "result": self.checkpoint.current, "error": None, "checkpoint": None, "trail": None,
        }  # fmt: skip
        writes = encode_memory_writes(self.attempt.tenant, self.story_id, self._memory)
        terminal = ("complete", {"result": self.checkpoint.current})
        return await self.store.finish(self.attempt, terminal, fields, self._take_unsent(), writes)

    async def fail(self, error_type: str, message: str) -> bool:
        if self.steps and self.steps[-1]["status"] == "running":
            self.steps[-1].update(status="failed", finished_at=now_iso(), usage=self.step_usage or None)
        error = {"type": error_type, "message": message}
        fields = {
            **self._state(None), "status": RunStatus.FAILED, "finished_at": now_iso(), "result": None,
            "outputs": {}, "error": error,
        }  # fmt: skip
        return await self.store.finish(self.attempt, ("failed", {"error": error}), fields, self._take_unsent())

    async def park(self, waiting: AwaitInput) -> bool:
        """The run stops at a human step; `awaiting` says what the person is asked."""
        awaiting = {"node": waiting.node, "prompt": waiting.question, "actions": waiting.actions, "since": now_iso()}
        fields = {**self._state(waiting.node), "status": RunStatus.AWAITING_INPUT, "awaiting": awaiting}
        events = [*self._take_unsent(), ("node_started", {"node": waiting.node}), ("awaiting_input", awaiting)]
        deadline = now_ms() + int(self.settings.input_timeout * 1000)
        return await self.store.await_input(self.attempt, deadline, fields, events)

    def _take_unsent(self) -> list[Event]:
        events, self.unsent = self.unsent, []
        return events


def _following(node: NodeSpec, action: str | None) -> str | None:
    if node.on is not None:
        return node.on.get(action or "")
    return node.next
