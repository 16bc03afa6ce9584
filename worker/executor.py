"""Runs one attempt of a run: take the lease, resume from the checkpoint, run the flow, end it once.

An attempt ends in one of four ways: the run completes (one fenced commit with its memory writes),
fails (its error), pauses at a human step (the worker lets go of it), or is interrupted (lease
lost, cancelled, shutdown, Redis away), and then the next attempt resumes from the last checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import Any

from arq.worker import Retry
from redis.asyncio.client import Pipeline
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from agents.context import SHARED_KEY, AwaitInput, RunInterrupted, StepFailed
from agents.llm import LLMClient
from agents.registry import Catalog, FlowSpec
from infra.metrics import LocalMetrics
from infra.redis import Backoff
from infra.settings import Settings
from infra.timeutil import now_iso
from memory.store import StoryContext, queue_story_context_reads, story_context_from
from runs.model import Attempt
from runs.store import Begun, RunStore
from worker.instrumentation import MeteredLLM
from worker.run_context import TokenFlusher, WorkerRunContext

logger = logging.getLogger("storyflow.worker")
HAND_BACK_BUDGET_S = 1.0


class FlowExecutor:
    """Per worker process: executes runs with the catalog and LLM client made at start-up."""

    def __init__(self, settings: Settings, store: RunStore, catalog: Catalog, llm: LLMClient) -> None:
        self.settings = settings
        self.store = store
        self.catalog = catalog
        self.metrics = LocalMetrics()
        self.llm = MeteredLLM(llm, self.metrics)
        self.lease_ms = int(settings.lease_seconds * 1000)
        self.tokens = TokenFlusher(store, settings.token_flush_ms / 1000)
        self.runs_done = 0
        # Runs whose arq job ended while the run did not (awaiting input, cancelled mid-run): after arq's
        # cleanup of the job, `rearm` puts them back if they were queued again meanwhile.
        self.to_rearm: dict[str, tuple[str, str, str]] = {}
        # Runs whose finish or pause script also ended their arq job: arq's own cleanup is skipped.
        self.arq_jobs_ended: set[str] = set()

    async def execute(self, tenant: str, job_id: str, story_id: str, flow: str) -> str:
        try:
            begun, context = await self._begin(tenant, job_id, story_id, flow)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise Retry(defer=1) from exc
        if isinstance(begun, str):
            logger.info("run not started: %s", begun, extra={"job_id": job_id, "tenant": tenant})
            return begun
        attempt = begun.attempt
        if attempt.number > 1:
            self.metrics.inc("storyflow_run_retries_total", flow=attempt.flow)
        started = time.monotonic()
        log = {"job_id": job_id, "tenant": tenant, "story_id": attempt.story_id, "flow": attempt.flow}
        logger.info("run started", extra={**log, "attempt": attempt.number})
        try:
            outcome = await self._supervise(begun, context)
        except asyncio.CancelledError:
            self.to_rearm[job_id] = (tenant, story_id, attempt.flow)
            raise
        self.arq_jobs_ended.add(job_id)
        seconds = time.monotonic() - started
        self.metrics.observe("storyflow_run_duration_seconds", seconds, flow=attempt.flow, status=outcome)
        logger.info("run %s", outcome, extra={**log, "attempt": attempt.number, "duration_s": round(seconds, 4)})
        return outcome

    async def rearm_if_needed(self, job_id: str) -> None:
        """Called once arq has finished the job (worker/main.py)."""
        stopped = self.to_rearm.pop(job_id, None)
        if stopped is not None:
            tenant, story_id, flow = stopped
            await self.store.rearm(tenant, job_id, story_id, flow)

    async def _begin(
        self, tenant: str, job_id: str, story_id: str, flow: str
    ) -> tuple[Begun | str, StoryContext | None]:
        """Take the lease and read the story's memory and documents, in one round trip."""
        spec = self.catalog.flows.get(flow)
        agents, doc_ids = (list(spec.agents), list(spec.requires_docs)) if spec else ([], [])
        start = spec.graph.nodes[spec.graph.start] if spec else None
        token = uuid.uuid4().hex

        async def build(pipe: Pipeline) -> None:
            await self.store.queue_begin(
                pipe, tenant, job_id, story_id, token, lease_ms=self.lease_ms, max_attempts=self.settings.max_attempts,
                first_node=start.name if start and start.agent else None, first_agent=start.agent if start else None,
            )  # fmt: skip
            queue_story_context_reads(pipe, tenant, story_id, agents, doc_ids)

        replies = await self.store.pipelined(build)
        begun = self.store.begun(replies[0], tenant, job_id, token)
        return begun, story_context_from(replies[1:], agents, doc_ids) if spec else None

    async def _supervise(self, begun: Begun, context: StoryContext | None) -> str:
        attempt = begun.attempt
        lease_lost = asyncio.Event()
        run = asyncio.current_task()
        assert run is not None
        heartbeat = asyncio.create_task(self._keep_lease(attempt, run, lease_lost))
        try:
            return await self._run_attempt(begun, context)
        except asyncio.CancelledError:
            if lease_lost.is_set():
                raise Retry(defer=0) from None
            # Shutdown or abort: give the run back unless it was cancelled (then the lease is gone). With Redis
            # away this gives up quickly; the lease then runs out and another worker takes the run over.
            with contextlib.suppress(RedisConnectionError, RedisTimeoutError, TimeoutError):
                async with asyncio.timeout(HAND_BACK_BUDGET_S):
                    await asyncio.shield(self.store.requeue(attempt))
            raise
        except RunInterrupted as exc:
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
        backoff = Backoff(cap=1.0)
        deadline = time.monotonic() + self.settings.lease_seconds
        while time.monotonic() < deadline:
            try:
                await self.store.requeue(attempt)
                return
            except (RedisConnectionError, RedisTimeoutError):
                await asyncio.sleep(backoff.next())

    async def _keep_lease(self, attempt: Attempt, run: asyncio.Task[Any], lease_lost: asyncio.Event) -> None:
        while True:
            await asyncio.sleep(self.settings.lease_seconds / 3)
            try:
                still_ours = await self.store.renew(attempt, self.lease_ms)
            except (RedisConnectionError, RedisTimeoutError):
                continue
            if not still_ours:
                lease_lost.set()
                run.cancel()
                return

    async def _run_attempt(self, begun: Begun, context: StoryContext | None) -> str:
        spec = self.catalog.flows.get(begun.attempt.flow)
        if spec is None or context is None:
            return await self._fail_at_start(
                begun, "unknown_flow", f"this worker does not know flow {begun.attempt.flow!r}"
            )
        if context.missing_docs:
            return await self._fail_at_start(begun, "missing_documents", f"documents missing: {context.missing_docs}")
        run = WorkerRunContext(
            self.settings, self.store, begun, spec.graph, context.docs, context.memory, self.metrics, self.llm.model,
            self.tokens,
        )  # fmt: skip
        try:
            async with asyncio.timeout(self.settings.job_timeout):
                await self._run_flow(run, spec)
        except TimeoutError:
            message = f"the attempt took longer than STORYFLOW_JOB_TIMEOUT={self.settings.job_timeout}s"
            return await self._ended(run.fail("timeout", message), begun.attempt, "failed")
        except AwaitInput as waiting:
            return await self._ended(run.park(waiting), begun.attempt, "awaiting_input")
        except StepFailed as exc:
            return await self._ended(run.fail(exc.error_type, str(exc)), begun.attempt, "failed")
        except (RunInterrupted, RedisConnectionError, RedisTimeoutError):
            raise
        except Exception as exc:
            logger.info("step failed: %r", exc, extra={"job_id": begun.attempt.job_id})
            return await self._ended(run.fail(type(exc).__name__, str(exc) or repr(exc)), begun.attempt, "failed")
        outcome = await self._ended(run.commit(), begun.attempt, "complete")
        self.runs_done += 1
        return outcome

    async def _run_flow(self, run: WorkerRunContext, spec: FlowSpec) -> None:
        run.check_documents()
        if run.checkpoint.next is None:
            return  # every step is done; only the commit was missing
        flow = self.catalog.build(spec.name, self.llm, start=run.checkpoint.next)
        await flow.run_async({SHARED_KEY: run})

    async def _fail_at_start(self, begun: Begun, error_type: str, message: str) -> str:
        error = {"type": error_type, "message": message}
        fields = {"status": "failed", "finished_at": now_iso(), "error": error, "result": None, "outputs": {}}
        return await self._ended(
            self.store.finish(begun.attempt, ("failed", {"error": error}), fields, []), begun.attempt, "failed"
        )

    @staticmethod
    async def _ended(write: Any, attempt: Attempt, outcome: str) -> str:
        if not await write:
            raise RunInterrupted(attempt.job_id)
        return outcome
