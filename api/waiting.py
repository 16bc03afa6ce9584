"""Waiting for a run to stop (`?wait=`), woken by Redis, never polling."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from infra import keys
from infra.redis import Backoff
from runs.model import STOPPED

logger = logging.getLogger("storyflow.api")
STOP_CHECK_S = 0.05  # how soon the listener notices a stop (a local wait: costs Redis nothing)


class FinishedRuns:
    """Wakes requests waiting for runs (`POST /run?wait=`) when they end or await input: one pub/sub
    subscription per API process.

    The scripts that finish a run publish `tenant:job_id` on FINISHED_CHANNEL. A waiter registers,
    then checks the record once (the run may have finished before), then sleeps until woken or
    timed out; a message missed while Redis was away only costs a waiter its timeout.
    """

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._listener: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        self._listener = asyncio.create_task(self._listen_forever())

    async def stop(self) -> None:
        # No cancel: redis-py can turn a cancellation mid-read into a connection error.
        self._stopping = True
        if self._listener:
            await asyncio.gather(self._listener, return_exceptions=True)

    async def wait(self, tenant: str, job_id: str, timeout: float) -> bool:  # noqa: ASYNC109
        """Whether the run stopped within `timeout`; it may have stopped before this was called."""
        with self.watching(tenant, job_id) as woken:
            if await self._finished(tenant, job_id):
                return True
            return await self.until(woken, tenant, job_id, timeout)

    @contextlib.contextmanager
    def watching(self, tenant: str, job_id: str) -> Iterator[asyncio.Future[None]]:
        """A future done when the run stops. Watching a run before it is submitted needs no check that
        it stopped before: `until` then costs Redis nothing unless it times out."""
        name = f"{tenant}:{job_id}"
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(name, set()).add(woken)
        try:
            yield woken
        finally:
            waiters = self._waiters.get(name, set())
            waiters.discard(woken)
            if not waiters:
                self._waiters.pop(name, None)

    async def until(self, woken: asyncio.Future[None], tenant: str, job_id: str, timeout: float) -> bool:  # noqa: ASYNC109
        await asyncio.wait([woken], timeout=timeout)
        return woken.done() or await self._finished(tenant, job_id)

    async def _finished(self, tenant: str, job_id: str) -> bool:
        status = await self.redis.hget(keys.run(tenant, job_id), "status")  # type: ignore[misc]
        return status is not None and orjson.loads(status) in STOPPED

    def _wake(self, name: str) -> None:
        for woken in self._waiters.get(name, ()):
            if not woken.done():
                woken.set_result(None)

    async def _listen_forever(self) -> None:
        backoff = Backoff()
        while not self._stopping:
            try:
                async with self.redis.pubsub() as pubsub:
                    await pubsub.subscribe(keys.FINISHED_CHANNEL)
                    backoff.reset()
                    while not self._stopping:
                        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=STOP_CHECK_S)
                        if message is not None:
                            self._wake(message["data"].decode())
            except (RedisError, OSError) as exc:
                if self._stopping:
                    return
                delay = backoff.next()
                logger.warning("finished-runs subscription lost (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
