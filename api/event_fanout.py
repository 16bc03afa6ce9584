"""Every open event stream of an API process, served by one reader on one connection of its own.

A stream (`GET /run/{id}/events`) subscribes with the id of the last event its client has. The
reader issues one `XREAD BLOCK` over all subscribed run streams, each from the oldest id any of its
subscribers still needs, and hands each subscriber the entries after its own id: history and live
events alike, so a resume with Last-Event-ID is exact. A new subscription wakes the blocked reader
with `CLIENT UNBLOCK` (one command from the shared pool) instead of waiting out the block.

So open streams hold no pooled connection each: 2000 of them cost one connection and one command
at a time, and the pool stays free for every tenant's other requests. A tenant may hold at most
STORYFLOW_MAX_STREAMS_PER_TENANT of them on this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from dataclasses import dataclass, field

from redis.asyncio import Redis
from redis.exceptions import RedisError

from infra.redis import BLOCK_CHUNK_S, Backoff, create_redis

logger = logging.getLogger("storyflow.api")
READ_COUNT = 500  # entries per stream per read
Entry = tuple[str, str, str]  # (event id, event name, JSON data)


def _id(value: str) -> tuple[int, int]:
    ms, _, seq = value.partition("-")
    return int(ms), int(seq or 0)


@dataclass(eq=False)
class Subscription:
    stream: str
    tenant: str
    last_id: str
    entries: asyncio.Queue[Entry] = field(default_factory=asyncio.Queue)
    closed: bool = False


class EventFanout:
    def __init__(self, redis_url: str, pool: Redis, max_per_tenant: int) -> None:
        self.pool = pool
        self.max_per_tenant = max_per_tenant
        self._reader = create_redis(redis_url, max_connections=1)
        self._reader_id: int | None = None
        self._subscriptions: defaultdict[str, set[Subscription]] = defaultdict(set)
        self._open: defaultdict[str, int] = defaultdict(int)
        self._changed = asyncio.Event()
        self._blocked = False
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._wakers: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._read_forever())

    async def stop(self) -> None:
        self._stopping = True
        self._changed.set()
        await self._wake_reader()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        await self._reader.aclose()

    def open_streams(self, tenant: str) -> int:
        return self._open[tenant]

    def subscribe(self, tenant: str, stream: str, after: str) -> Subscription | None:
        """A subscription, or None when the tenant already holds its share of this process' streams."""
        if self._open[tenant] >= self.max_per_tenant:
            return None
        self._open[tenant] += 1
        subscription = Subscription(stream, tenant, after)
        self._subscriptions[stream].add(subscription)
        self._changed.set()
        waking = asyncio.get_running_loop().create_task(self._wake_reader())
        self._wakers.add(waking)  # a task nobody refers to may be collected before it runs
        waking.add_done_callback(self._wakers.discard)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """Idempotent: the stream's end and the response's end may both call it."""
        if subscription.closed:
            return
        subscription.closed = True
        self._open[subscription.tenant] -= 1
        if not self._open[subscription.tenant]:
            del self._open[subscription.tenant]
        followers = self._subscriptions[subscription.stream]
        followers.discard(subscription)
        if not followers:
            del self._subscriptions[subscription.stream]

    async def _wake_reader(self) -> None:
        if self._blocked and self._reader_id is not None:
            self._blocked = False
            with contextlib.suppress(RedisError, OSError):
                await self.pool.client_unblock(self._reader_id)

    async def _read_forever(self) -> None:
        backoff = Backoff()
        while not self._stopping:
            try:
                await self._read_once()
                backoff.reset()
            except (RedisError, OSError) as exc:
                self._reader_id = None
                if self._stopping:
                    return
                delay = backoff.next()
                logger.warning("event reader lost Redis (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)

    async def _read_once(self) -> None:
        if not self._subscriptions:
            self._changed.clear()
            if not self._stopping:  # `stop` sets _stopping, then _changed: seen here or wakes the wait
                await self._changed.wait()
            return
        self._changed.clear()
        if self._reader_id is None:  # connected on the first subscription: an API that serves none pays nothing
            self._reader_id = int(await self._reader.client_id())
        cursors = {stream: min((s.last_id for s in subs), key=_id) for stream, subs in self._subscriptions.items()}
        self._blocked = True
        try:
            reply = await self._reader.xread(cursors, block=int(BLOCK_CHUNK_S * 1000), count=READ_COUNT)  # type: ignore[arg-type]
        finally:
            self._blocked = False
        for raw_stream, entries in reply or []:
            self._deliver(raw_stream.decode(), entries)

    def _deliver(self, stream: str, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        decoded = [(i.decode(), f[b"event"].decode(), f[b"data"].decode()) for i, f in entries]
        for subscription in self._subscriptions.get(stream, ()):
            after = _id(subscription.last_id)
            for entry in decoded:
                if _id(entry[0]) > after:
                    subscription.entries.put_nowait(entry)
            if decoded:
                subscription.last_id = max(subscription.last_id, decoded[-1][0], key=_id)
