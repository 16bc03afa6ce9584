"""The Redis connection: one pooled client per process, speaking JSON for arq job payloads."""

from __future__ import annotations

from typing import Any

import orjson
from arq.connections import ArqRedis
from redis.asyncio import ConnectionPool

# Blocking reads (BLPOP, XREAD BLOCK) are issued in chunks shorter than this.
SOCKET_TIMEOUT_S = 5.0
BLOCK_CHUNK_S = 2.0


class Backoff:
    """Delays between tries to reach Redis again: 0.1 s, doubling, at most `cap`."""

    def __init__(self, cap: float = 2.0, first: float = 0.1) -> None:
        self.first, self.cap = first, cap
        self.delay = first

    def next(self) -> float:
        delay, self.delay = self.delay, min(self.delay * 2, self.cap)
        return delay

    def reset(self) -> None:
        self.delay = self.first


def _exception_as_text(value: Any) -> str:
    # arq serializes a job's "result" when it drops the job, and for an aborted one that is the
    # CancelledError: written as text instead of a traceback in the worker's log.
    if isinstance(value, BaseException):
        return repr(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps_job(data: dict[str, Any]) -> bytes:
    return orjson.dumps(data, default=_exception_as_text)


def loads_job(raw: bytes) -> dict[str, Any]:
    value: dict[str, Any] = orjson.loads(raw)
    return value


def create_redis(url: str, *, max_connections: int = 512) -> ArqRedis:
    pool = ConnectionPool.from_url(
        url,
        max_connections=max_connections,
        socket_connect_timeout=SOCKET_TIMEOUT_S,
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_keepalive=True,
        health_check_interval=30,
    )
    return ArqRedis(pool_or_conn=pool, job_serializer=dumps_job, job_deserializer=loads_job)
