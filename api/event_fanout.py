"""Every open event stream of an API process, served by one reader on one connection of its own.

A stream (`GET /run/{id}/events`) subscribes with the id of the last event its client has. The
reader issues one `XREAD BLOCK` over all subscribed run streams, each from the oldest id any of its
subscribers still needs, and hands each subscriber the entries after its own id: history and live
events alike, so a resume with Last-Event-ID is exact, and after a Redis outage every subscriber
goes on from its own last id. A new subscription wakes the blocked reader with `CLIENT UNBLOCK`
(one command from the shared pool) instead of waiting out the block.

So open streams hold no pooled connection each: 2000 of them cost one connection and one command
at a time, and the pool stays free for every tenant's other requests. A tenant may hold at most
STORYFLOW_MAX_STREAMS_PER_TENANT of them on this process.

One XREAD over every stream rather than chunks: each read is one round trip whatever the number of
streams, and under load one read returns the entries of many streams at once. Chunks would need a
blocked connection each, or polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import RedisError

from infra.redis import BLOCK_CHUNK_S, SOCKET_TIMEOUT_S, Backoff

logger = logging.getLogger("storyflow.api")
READER_NAME = "storyflow-events"
READ_COUNT = 500  # entries per stream per read
WAKE_TRIES = 20
WAKE_RETRY_S = 0.005
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
    def __init__(self, redis_url: str, pool: Redis, max_per_tenant: int, *, block_s: float = BLOCK_CHUNK_S) -> None:
        self.pool = pool
        self.max_per_tenant = max_per_tenant
        self.block_s = block_s
        # Only makes the reader's connection (with the URL's TLS, socket and password): never lends one.
        self._connections = ConnectionPool.from_url(
            redis_url,
            socket_connect_timeout=SOCKET_TIMEOUT_S,
            socket_timeout=block_s + SOCKET_TIMEOUT_S,
            socket_keepalive=True,
            client_name=f"{READER_NAME}-{os.getpid()}",  # for CLIENT LIST: what this connection is
        )
        self._connection: AbstractConnection | None = None
        self._reader_id: int | None = None  # the connection's CLIENT ID, read right after each connect
        self._subscriptions: defaultdict[str, set[Subscription]] = defaultdict(set)
        self._open: defaultdict[str, int] = defaultdict(int)
        self._reads = 0  # XREADs issued: a wake-up is meant for the one read that lacks the new stream
        self._blocked = False
        self._waking_read = -1
        self._changed = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._wakers: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._read_forever())

    async def stop(self) -> None:
        # No cancel: the read in flight ends within block_s, or at once when woken.
        self._stopping = True
        self._changed.set()
        await self._wake_reader(self._reads)
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        await self._disconnect()

    def open_streams(self, tenant: str) -> int:
        return self._open.get(tenant, 0)

    def subscribe(self, tenant: str, stream: str, after: str) -> Subscription | None:
        """A subscription, or None when the tenant already holds its share of this process' streams."""
        if self.open_streams(tenant) >= self.max_per_tenant:
            return None
        self._open[tenant] += 1
        subscription = Subscription(stream, tenant, after)
        self._subscriptions[stream].add(subscription)
        self._changed.set()
        self._wake_soon()
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        """Idempotent. The reader drops the stream at its next read."""
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

    def _wake_soon(self) -> None:
        """Ends the read in flight, which lacks the new stream, unless a wake-up for it is on its way."""
        if not self._blocked or self._waking_read == self._reads:
            return  # not blocked: the next read, about to be issued, includes the new stream
        self._waking_read = self._reads
        waking = asyncio.get_running_loop().create_task(self._wake_reader(self._reads))
        self._wakers.add(waking)  # a task nobody refers to may be collected before it runs
        waking.add_done_callback(self._wakers.discard)

    async def _wake_reader(self, read: int) -> None:
        # CLIENT UNBLOCK travels on another connection than the XREAD, so it can reach Redis first and
        # unblock nothing: then it is sent again, until that read has ended.
        for _ in range(WAKE_TRIES):
            if self._reads != read or not self._blocked or self._reader_id is None:
                return
            with contextlib.suppress(RedisError, OSError):
                if await self.pool.client_unblock(self._reader_id):
                    return
            await asyncio.sleep(WAKE_RETRY_S)

    async def _read_forever(self) -> None:
        backoff = Backoff()
        while not self._stopping:
            try:
                await self._read_once()
                backoff.reset()
            except (RedisError, OSError) as exc:
                await self._disconnect()
                if self._stopping:
                    return
                delay = backoff.next()
                logger.warning("event reader lost Redis (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)

    async def _read_once(self) -> None:
        if not self._subscriptions:
            # Idle: no connection held, so an API that serves no stream costs Redis nothing.
            await self._disconnect()
            self._changed.clear()
            if not self._stopping:  # `stop` sets _stopping, then _changed: seen here or wakes the wait
                await self._changed.wait()
            return
        self._changed.clear()
        connection = self._connection or await self._connect()
        cursors = {stream: min((s.last_id for s in subs), key=_id) for stream, subs in self._subscriptions.items()}
        if not cursors:
            return  # every subscriber left while connecting
        self._reads += 1
        self._blocked = True
        try:
            await connection.send_command(
                "XREAD", "COUNT", READ_COUNT, "BLOCK", int(self.block_s * 1000), "STREAMS", *cursors, *cursors.values()
            )
            reply = await connection.read_response()
        finally:
            self._blocked = False
        for raw_stream, entries in reply or ():
            self._deliver(raw_stream.decode(), entries)

    async def _connect(self) -> AbstractConnection:
        # A connection of its own, never the pool's: the pool checks connections out and may silently
        # reconnect one, under a client id the wake-ups would not know.
        connection = self._connections.connection_class(**self._connections.connection_kwargs)
        try:
            await connection.send_command("CLIENT", "ID")  # connects first
            self._reader_id = int(await connection.read_response())
        except BaseException:
            await connection.disconnect()
            raise
        self._connection = connection
        return connection

    async def _disconnect(self) -> None:
        connection, self._connection, self._reader_id = self._connection, None, None
        if connection is not None:
            await connection.disconnect()

    def _deliver(self, stream: str, entries: list[list[Any]]) -> None:
        decoded = [_entry(entry_id, fields) for entry_id, fields in entries]
        for subscription in self._subscriptions.get(stream, ()):
            after = _id(subscription.last_id)
            for entry in decoded:
                if _id(entry[0]) > after:
                    subscription.entries.put_nowait(entry)
            if decoded:
                subscription.last_id = max(subscription.last_id, decoded[-1][0], key=_id)


def _entry(entry_id: bytes, fields: list[bytes]) -> Entry:
    values = dict(zip(fields[::2], fields[1::2], strict=True))
    return entry_id.decode(), values[b"event"].decode(), values[b"data"].decode()
