"""Live workers, from the heartbeats they publish in Redis."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter
from pydantic import BaseModel

from api.deps import OpsAccessDep, RedisDep
from api.errors import error_responses
from infra import keys
from infra.timeutil import now_ms

router = APIRouter(tags=["operations"])


class WorkerInfo(BaseModel):
    worker_id: str
    host: str
    pid: int
    version: str
    in_flight: int
    runs_done: int
    seen_at: float
    loop_lag_p99_ms: float | None = None  # how late its event loop woke a sleeper, since the last heartbeat


async def live_workers(redis: RedisDep) -> list[dict[str, Any]]:
    fresh = await redis.zrangebyscore(keys.WORKERS_SEEN, now_ms() - keys.WORKER_FRESH_MS, "+inf")
    if not fresh:
        return []
    infos = await redis.hmget(keys.WORKERS_INFO, fresh)  # type: ignore[misc]
    return [orjson.loads(info) for info in infos if info]


@router.get("/workers", response_model=list[WorkerInfo], responses=error_responses(401, 403, 503))
async def list_workers(redis: RedisDep, access: OpsAccessDep) -> list[dict[str, Any]]:
    return await live_workers(redis)
