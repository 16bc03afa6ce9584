"""The worker process: an arq Worker that is woken for new runs and outlives Redis outages."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import time
import uuid
from typing import Any

import orjson
from arq.connections import ArqRedis
from arq.worker import func
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from agents.llm import create_llm
from agents.registry import load_catalog
from infra import VERSION, keys
from infra.redis import BLOCK_CHUNK_S, Backoff, create_redis, dumps_job, loads_job
from infra.settings import Settings
from infra.timeutil import now_ms
from runs.store import RUN_FUNCTION, RunStore
from worker.arq_compat import ArqCompat
from worker.executor import FlowExecutor
from worker.instrumentation import LoopLag
from worker.webhooks import WebhookDeliverer

logger = logging.getLogger("storyflow.worker")
HEARTBEAT_S = 2.0


async def run_flow(ctx: dict[str, Any], tenant: str, job_id: str, story_id: str, flow: str) -> str:
    executor: FlowExecutor = ctx["executor"]
    return await executor.execute(tenant, job_id, story_id, flow)


class StoryflowWorker(ArqCompat):
    """arq's Worker, but it blocks on a wake-up list between polls and waits out Redis outages."""

    def __init__(self, settings: Settings, redis: ArqRedis, **kwargs: Any) -> None:
        self.settings = settings
        self.worker_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        super().__init__(
            functions=[func(run_flow, name=RUN_FUNCTION, timeout=settings.job_timeout + 60, max_tries=10**9)],
            redis_pool=redis,
            max_jobs=settings.worker_concurrency,
            poll_delay=settings.poll_interval,
            keep_result=0,
            job_serializer=dumps_job,
            job_deserializer=loads_job,
            allow_abort_jobs=True,
            handle_signals=False,
            health_check_interval=3600,
            on_startup=self._startup,
            on_shutdown=self._shutdown,
            lease_s=settings.lease_seconds,  # the executor renews lease and in-progress marker together
            **kwargs,
        )
        self._stop = asyncio.Event()
        self._beat_task: asyncio.Task[None] | None = None
        self._webhooks_task: asyncio.Task[None] | None = None
        self.loop_lag = LoopLag()
        self._lag_task: asyncio.Task[None] | None = None

    async def _startup(self, ctx: dict[str, Any]) -> None:
        store = RunStore(self.pool, result_ttl=self.settings.result_ttl, max_queued=self.settings.max_queued_runs)
        catalog = load_catalog(self.settings.extra_agent_modules, self.settings.extra_agent_dirs)
        ctx["executor"] = FlowExecutor(self.settings, store, catalog, create_llm(self.settings, self.pool))
        self._beat_task = asyncio.create_task(self._beat_forever())
        self._lag_task = asyncio.create_task(self.loop_lag.run())
        if self.settings.webhook_secret is not None and not self.burst:
            self._webhooks_task = asyncio.create_task(WebhookDeliverer(self.pool, self.settings).run())
        logger.info("worker %s ready: flows %s, concurrency %d", self.worker_id, sorted(catalog.flows), self.max_jobs)

    async def _shutdown(self, ctx: dict[str, Any]) -> None:
        for task in (self._beat_task, self._lag_task):
            if task:
                task.cancel()
        if self._webhooks_task:
            self._webhooks_task.cancel()  # deliveries under way come back when their claim runs out
            await asyncio.gather(self._webhooks_task, return_exceptions=True)
        with contextlib.suppress(RedisConnectionError, RedisTimeoutError, OSError):
            await self._beat()  # the last metrics
        await ctx["executor"].llm.aclose()
        async with self.pool.pipeline(transaction=True) as pipe:
            pipe.zrem(keys.WORKERS_SEEN, self.worker_id)
            pipe.hdel(keys.WORKERS_INFO, self.worker_id)
            await pipe.execute()

    async def _beat_forever(self) -> None:
        while True:
            try:
                await self._beat()
                await self._tidy()
            except (RedisConnectionError, RedisTimeoutError, OSError):
                logger.warning("heartbeat failed: Redis unavailable")
            await asyncio.sleep(HEARTBEAT_S)

    async def _tidy(self) -> None:
        """Chores any worker may do: expired runs out of the indexes, runs awaiting input past their deadline,
        workers long dead out of the registry."""
        store: RunStore = self.ctx["executor"].store
        await store.forget_expired()
        await store.expire_inputs()
        gone = await self.pool.zrangebyscore(keys.WORKERS_SEEN, "-inf", now_ms() - keys.WORKER_FORGOTTEN_MS)
        if gone:
            async with self.pool.pipeline(transaction=True) as pipe:
                pipe.zrem(keys.WORKERS_SEEN, *gone)
                pipe.hdel(keys.WORKERS_INFO, *gone)
                await pipe.execute()

    async def _beat(self) -> None:
        executor: FlowExecutor = self.ctx["executor"]
        info = {
            "worker_id": self.worker_id, "host": socket.gethostname(), "pid": os.getpid(), "version": VERSION,
            "in_flight": self.job_counter, "runs_done": executor.runs_done, "seen_at": time.time(),
            "loop_lag_p99_ms": self.loop_lag.take(),
        }  # fmt: skip
        async with self.pool.pipeline(transaction=False) as pipe:
            pipe.zadd(keys.WORKERS_SEEN, {self.worker_id: now_ms()})
            pipe.hset(keys.WORKERS_INFO, self.worker_id, orjson.dumps(info).decode())
            flushed = executor.metrics.flush_into(pipe)
            try:
                await pipe.execute()
            except BaseException:
                executor.metrics.restore(flushed)
                raise

    def job_ended_by_run(self, job_id: str) -> bool:
        ended: set[str] = self.ctx["executor"].arq_jobs_ended
        if job_id in ended:
            ended.discard(job_id)
            return True
        return False

    async def job_finished(self, job_id: str) -> None:
        # A run queued again while arq was finishing its last job gets its job back.
        await self.ctx["executor"].rearm_if_needed(job_id)

    def request_stop(self) -> None:
        """Graceful stop (SIGTERM, Ctrl-C): take no new runs, let in-flight ones finish within the grace."""
        logger.info("worker %s stopping: %d runs in flight", self.worker_id, self.job_counter)
        self.allow_pick_jobs = False
        self._stop.set()

    async def main(self) -> None:
        self.ctx["redis"] = self.pool
        await self._retry_redis(self._startup_once)
        while not self._stop.is_set():
            if await self._retry_redis(self._iterate):
                break
        await self._finish_in_flight()

    async def _finish_in_flight(self) -> None:
        """Wait up to the grace period; runs still going are then handed back to the queue at once."""
        running = [task for task in self.tasks.values() if not task.done()]
        if running:
            _, running_set = await asyncio.wait(running, timeout=self.settings.shutdown_grace)
            for task in running_set:
                task.cancel()
            await asyncio.gather(*running_set, return_exceptions=True)

    async def _startup_once(self) -> bool:
        if self.on_startup:
            await self.on_startup(self.ctx)
        return True

    async def _retry_redis(self, step: Any) -> bool:
        """Run `step` until Redis answers; True (done) as soon as a stop is asked for while it is away."""
        backoff = Backoff()
        while True:
            try:
                return bool(await step())
            except (RedisConnectionError, RedisTimeoutError, ConnectionError) as exc:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # redis-py may turn a cancellation mid-command into a connection error.
                    raise asyncio.CancelledError from exc
                if self._stop.is_set():
                    return True  # what could not be handed back is recovered by its lease, as after a crash
                delay = backoff.next()
                logger.warning("Redis unavailable (%s); retrying in %.1fs", exc, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)

    async def _iterate(self) -> bool:
        await self.poll_once()
        if self.burst and await self._burst_finished():
            return True
        await self._wait_for_work()
        return False

    async def _burst_finished(self) -> bool:
        if await self.pool.zcard(self.queue_name):
            return False
        if self.tasks:
            await asyncio.gather(*self.tasks.values(), return_exceptions=True)
            return False
        return True

    async def _wait_for_work(self) -> None:
        timeout = min(self.poll_delay_s, BLOCK_CHUNK_S)
        if self._stop.is_set():
            return
        if self.more_queued and self.job_counter < self.max_jobs:
            await asyncio.sleep(0)  # let the runs just started go on before the next poll
            return
        if self.allow_pick_jobs and self.job_counter < self.max_jobs:
            await self.pool.blpop([keys.WAKE_LIST], timeout=timeout)  # type: ignore[arg-type,misc]
            return
        self.slot_freed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.slot_freed.wait(), timeout)


def build_worker(settings: Settings, *, burst: bool = False) -> StoryflowWorker:
    if not settings.redis_url:
        raise RuntimeError("STORYFLOW_REDIS_URL is not set")
    return StoryflowWorker(settings, create_redis(settings.redis_url), burst=burst)


async def serve(settings: Settings, *, burst: bool = False) -> None:
    worker = build_worker(settings, burst=burst)
    # What is loaded by now lives as long as the process: out of the collector's sight, so that a full
    # collection with a thousand runs in flight does not stop the event loop for long.
    gc.freeze()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, worker.request_stop)
    try:
        await worker.main()
    finally:
        await worker.close()


def run(settings: Settings) -> None:
    import uvloop

    uvloop.run(serve(settings))
