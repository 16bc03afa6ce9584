"""Errors answer as JSON with a message; storage outages as 503 with Retry-After; never a stack trace."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from api.schemas import ErrorBody

logger = logging.getLogger("storyflow.api")
RETRY_AFTER_S = "1"


class EscapedJSONResponse(JSONResponse):
    """JSON with non-ASCII escaped: renders strings that echo client input, even a lone surrogate (`\\ud800`)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode()


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


async def _invalid_request(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return EscapedJSONResponse({"detail": jsonable_encoder(exc.errors())}, status_code=422)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unexpected error in %s %s", request.method, request.url.path)
    return JSONResponse({"detail": "internal error"}, status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(RedisConnectionError, _redis_down)
    app.add_exception_handler(RedisTimeoutError, _redis_down)
    app.add_exception_handler(Exception, _unexpected)
