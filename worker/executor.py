"""Runs one attempt of a run: lease, flow, progress, then one fenced commit or failure."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from arq.worker import Retry
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from agents.llm import LLMClient
from agents.registry import Catalog
from infra.metrics import LocalMetrics
from infra.settings import Settings
from memory.store import StoryContext, encode_memory_writes, queue_story_context_reads, story_context_from
from worker.instrumentation import MeteredLLM
from worker.runstore import Attempt, Event, RunStore

logger = logging.getLogger("storyflow.worker")
PREVIEW_CHARS = 200


class LeaseLost(Exception):
    """Another worker owns the run now (or it was cancelled): this attempt must not write."""


@dataclass
class ProgressTracker:
    """Reports node starts and ends to the run record and its event stream."""

    store: RunStore
    attempt: Attempt
    total: int
    metrics: LocalMetrics
    done: list[str] = field(default_factory=list)
    current: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    node_started_at: float = 0.0
    # node_finished is sent with the next node_started, or with the commit: one round trip per step.
    unsent: list[Event] = field(default_factory=list)
    # The begin script already announced the first node's start.
    announced: str | None = None

    def progress(self) -> dict[str, Any]:
        return {"done": list(self.done), "current": self.current, "total": self.total}

    async def node_started(self, node: str) -> None:
        self.current = node
        self.node_started_at = time.monotonic()
        if node == self.announced and not self.done:
            self.announced = None
            return
        events = [*self.take_unsent(), ("node_started", {"node": node})]
        if not await self.store.progress(self.attempt, self.progress(), self.outputs, events):
            raise LeaseLost(self.attempt.job_id)

    async def node_finished(self, node: str, output: str) -> None:
        self.done.append(node)
        self.current = None
        seconds = time.monotonic() - self.node_started_at
        self.metrics.observe("storyflow_node_duration_seconds", seconds, flow=self.attempt.flow, node=node)
        self.unsent.append(("node_finished", {"node": node, "preview": output[:PREVIEW_CHARS]}))

    def take_unsent(self) -> list[Event]:
        events, self.unsent = self.unsent, []
        return events


class FlowExecutor:
    """Per worker process: executes runs with the catalog and LLM client made at start-up."""

    def __init__(self, settings: Settings, store: RunStore, catalog: Catalog, llm: LLMClient) -> None:
        self.settings = settings
        self.store = store
        self.catalog = catalog
        self.metrics = LocalMetrics()
        self.llm = MeteredLLM(llm, self.metrics)
        self.lease_ms = int(settings.lease_seconds * 1000)
        self.runs_done = 0

    async def execute(self, tenant: str, job_id: str, story_id: str, flow: str) -> str:
        try:
            begun, context = await self._begin(tenant, job_id, story_id, flow)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise Retry(defer=1) from exc
        if isinstance(begun, str):
            logger.info("run not started: %s", begun, extra={"job_id": job_id, "tenant": tenant})
            return begun
        if begun.number > 1:
            self.metrics.inc("storyflow_run_retries_total", flow=begun.flow)
        started = time.monotonic()
        log = {"job_id": job_id, "tenant": tenant, "story_id": begun.story_id, "flow": begun.flow}
        logger.info("run started", extra={**log, "attempt": begun.number})
        outcome = await self._supervise(begun, context)
        seconds = time.monotonic() - started
        self.metrics.observe("storyflow_run_duration_seconds", seconds, flow=begun.flow, status=outcome)
        logger.info("run %s", outcome, extra={**log, "attempt": begun.number, "duration_s": round(seconds, 4)})
        return outcome

    async def _begin(
        self, tenant: str, job_id: str, story_id: str, flow: str
    ) -> tuple[Attempt | str, StoryContext | None]:
        """Take the lease and read the story's memory and documents, in one round trip."""
        spec = self.catalog.flows.get(flow)
        agents, doc_ids = (list(spec.agents), list(spec.requires_docs)) if spec else ([], [])
        token = uuid.uuid4().hex
        async with self.store.redis.pipeline(transaction=False) as pipe:
            await self.store.queue_begin(
                pipe, tenant, job_id, story_id, token, lease_ms=self.lease_ms,
                max_attempts=self.settings.max_attempts, first_node=agents[0] if agents else None,
            )  # fmt: skip
            queue_story_context_reads(pipe, tenant, story_id, agents, doc_ids)
            replies = await pipe.execute()
        begun = self.store.begun(replies[0], tenant, job_id, token)
        return begun, story_context_from(replies[1:], agents, doc_ids) if spec else None

    async def _supervise(self, attempt: Attempt, context: StoryContext | None) -> str:
        lease_lost = asyncio.Event()
        run = asyncio.current_task()
        assert run is not None
        heartbeat = asyncio.create_task(self._keep_lease(attempt, run, lease_lost))
        try:
            return await self._run_attempt(attempt, context)
        except asyncio.CancelledError:
            if lease_lost.is_set():
                raise Retry(defer=0) from None
            # Shutdown or abort: give the run back unless it was cancelled (then the lease is gone).
            await asyncio.shield(self.store.requeue(attempt))
            raise
        except LeaseLost as exc:
            logger.warning("attempt stopped: lease lost", extra={"job_id": attempt.job_id})
            raise Retry(defer=1) from exc
        except (RedisConnectionError, RedisTimeoutError) as exc:
            logger.warning("attempt stopped: Redis unavailable", extra={"job_id": attempt.job_id})
            heartbeat.cancel()
            await self._hand_back_when_redis_returns(attempt)
            raise Retry(defer=0) from exc
        finally:
            heartbeat.cancel()

    async def _hand_back_when_redis_returns(self, attempt: Attempt) -> None:
        """Give the run back as soon as Redis answers again, rather than letting its lease run out."""
        delay = 0.1
        deadline = time.monotonic() + self.settings.lease_seconds
        while time.monotonic() < deadline:
            try:
                await self.store.requeue(attempt)
                return
            except (RedisConnectionError, RedisTimeoutError):
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _keep_lease(self, attempt: Attempt, run: asyncio.Task[Any], lease_lost: asyncio.Event) -> None:
        while True:
            await asyncio.sleep(self.settings.lease_seconds / 3)
            try:
                still_ours = await self.store.renew(attempt.job_id, attempt.token, self.lease_ms)
            except (RedisConnectionError, RedisTimeoutError):
                continue
            if not still_ours:
                lease_lost.set()
                run.cancel()
                return

    async def _run_attempt(self, attempt: Attempt, context: StoryContext | None) -> str:
        spec = self.catalog.flows.get(attempt.flow)
        if spec is None or context is None:
            await self.store.fail(attempt, "unknown_flow", f"this worker does not know flow {attempt.flow!r}")
            return "failed"
        if context.missing_docs:
            await self.store.fail(attempt, "missing_documents", f"documents missing: {context.missing_docs}")
            return "failed"
        tracker = ProgressTracker(
            self.store, attempt, total=len(spec.agents), metrics=self.metrics, announced=spec.agents[0]
        )
        shared: dict[str, Any] = {
            "job_id": attempt.job_id, "story_id": attempt.story_id, "input": attempt.input,
            "current": attempt.input, "docs": context.docs, "memory": context.memory,
            "outputs": tracker.outputs, "tracker": tracker,
        }  # fmt: skip
        # Transient LLM failures are retried once, in the LLM client, which can honour Retry-After.
        flow = self.catalog.build(spec.name, self.llm)
        try:
            async with asyncio.timeout(self.settings.job_timeout):
                await flow.run_async(shared)
        except TimeoutError:
            message = f"the run took longer than STORYFLOW_JOB_TIMEOUT={self.settings.job_timeout}s"
            await self.store.fail(attempt, "timeout", message, tracker.take_unsent())
            return "failed"
        except (LeaseLost, RedisConnectionError, RedisTimeoutError):
            raise
        except Exception as exc:
            logger.info("agent %s failed: %r", tracker.current, exc, extra={"job_id": attempt.job_id})
            await self.store.fail(attempt, type(exc).__name__, str(exc) or repr(exc), tracker.take_unsent())
            return "failed"
        writes = encode_memory_writes(attempt.tenant, attempt.story_id, context.memory)
        committed = await self.store.complete(
            attempt, shared["current"], tracker.outputs, tracker.progress(), writes, tracker.take_unsent()
        )
        if not committed:
            raise LeaseLost(attempt.job_id)
        self.runs_done += 1
        return "complete"
