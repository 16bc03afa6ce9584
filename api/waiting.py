"""Waiting for a run to finish, woken by its event stream rather than by polling the record."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from redis.asyncio import Redis

from infra import keys
from infra.redis import BLOCK_CHUNK_S

TERMINAL_EVENTS = frozenset({"complete", "failed", "cancelled"})
Event = tuple[str, str, str]  # (stream id, event name, JSON data)


async def read_events(
    redis: Redis,
    tenant: str,
    job_id: str,
    *,
    after: str = "0-0",
    timeout: float | None = None,  # noqa: ASYNC109
) -> AsyncIterator[Event]:
    """The run's events after `after`, as they come, until a terminal one or the timeout."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    stream = keys.run_events(tenant, job_id)
    while True:
        remaining = BLOCK_CHUNK_S if deadline is None else min(BLOCK_CHUNK_S, deadline - loop.time())
        if remaining <= 0:
            return
        reply = await redis.xread({stream: after}, block=max(1, int(remaining * 1000)), count=100)
        if not reply and not await redis.exists(keys.run(tenant, job_id)):
            return  # the run expired or never existed
        for _, entries in reply:
            for entry_id, fields in entries:
                after = entry_id.decode()
                name = fields[b"event"].decode()
                yield after, name, fields[b"data"].decode()
                if name in TERMINAL_EVENTS:
                    return


async def wait_until_finished(redis: Redis, tenant: str, job_id: str, timeout: float) -> bool:  # noqa: ASYNC109
    async for _, name, _ in read_events(redis, tenant, job_id, timeout=timeout):
        if name in TERMINAL_EVENTS:
            return True
    return False
