"""Errors answer as JSON with a message; storage outages as 503 with Retry-After; never a stack trace."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from api.schemas import ErrorBody

logger = logging.getLogger("storyflow.api")
RETRY_AFTER_S = "1"


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error answers a route can give."""
    return {code: {"model": ErrorBody} for code in codes}


def validation_error(field: str, message: str, location: str = "body") -> list[dict[str, Any]]:
    return [{"loc": [location, field], "msg": message, "type": "value_error"}]


def unavailable(message: str) -> JSONResponse:
    return JSONResponse(
        {"detail": message}, status_code=status.HTTP_503_SERVICE_UNAVAILABLE, headers={"Retry-After": RETRY_AFTER_S}
    )


async def _redis_down(request: Request, exc: Exception) -> JSONResponse:
    logger.warning("Redis unavailable during %s %s: %s", request.method, request.url.path, exc)
    return unavailable("storage is unavailable; retry later")


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unexpected error in %s %s", request.method, request.url.path)
    return JSONResponse({"detail": "internal error"}, status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RedisConnectionError, _redis_down)
    app.add_exception_handler(RedisTimeoutError, _redis_down)
    app.add_exception_handler(Exception, _unexpected)
