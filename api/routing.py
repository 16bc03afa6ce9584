"""Routes whose JSON bodies are parsed as RFC 8259 says: no NaN, no Infinity, no number that overflows.

Python's `json` accepts all three, and a non-finite float then reaches validation errors and answers
that cannot be encoded as JSON. orjson refuses them (and lone surrogates) with a `JSONDecodeError`,
which FastAPI turns into a 422 like any other malformed body.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response


class StrictJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = orjson.loads(await self.body())
        return self._json


class StrictJSONRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict_handler(request: Request) -> Response:
            return await handler(StrictJSONRequest(request.scope, request.receive))

        return strict_handler
