"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from api.deps import OpsAccessDep, RedisDep
from api.errors import error_responses
from api.schemas import Health
from infra import keys
from infra.timeutil import now_ms

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}, **error_responses(401, 403)})
async def readyz(redis: RedisDep, access: OpsAccessDep) -> JSONResponse:
    try:
        await redis.ping()
        workers = await redis.zcount(keys.WORKERS_SEEN, now_ms() - keys.WORKER_FRESH_MS, "+inf")
    except (RedisError, OSError) as exc:
        body = Health(status="unavailable", reason=f"Redis does not answer: {exc}")
        return JSONResponse(body.model_dump(), status_code=503, headers={"Retry-After": "1"})
    if not workers:
        body = Health(status="unavailable", reason="no worker has sent a heartbeat in the last 15 s", workers=0)
        return JSONResponse(body.model_dump(), status_code=503, headers={"Retry-After": "1"})
    return JSONResponse(Health(status="ready", workers=workers).model_dump())
