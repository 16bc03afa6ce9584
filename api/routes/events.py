"""Server-Sent Events of a run's progress, from its Redis stream: any API process can serve any run."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from sse_starlette import EventSourceResponse
from starlette.types import Receive, Scope, Send

from api.deps import RedisDep, StoreDep, TenantDep
from api.errors import error_responses, validation_error
from api.event_fanout import EventFanout, Subscription
from api.routes.runs import find_run
from infra import keys
from runs.model import TERMINAL

router = APIRouter(tags=["runs"])
HEARTBEAT_S = 15
STREAM_ID = r"^\d{1,20}-\d{1,20}$"
MAX_STREAM_PART = 2**64 - 1  # Redis refuses a stream id with a larger part
FINISHED = frozenset(str(status) for status in TERMINAL)


def is_stream_id(value: str) -> bool:
    match = re.fullmatch(r"(\d{1,20})-(\d{1,20})", value)
    return match is not None and all(int(part) <= MAX_STREAM_PART for part in match.groups())


@router.get(
    "/run/{job_id}/events",
    response_class=EventSourceResponse,
    responses={
        200: {"content": {"text/event-stream": {}}},
        204: {"description": "the run has finished and sent every event after Last-Event-ID: do not reconnect"},
        **error_responses(401, 404, 422, 429, 503),
    },
)
async def run_events(
    request: Request,
    job_id: str,
    tenant: TenantDep,
    store: StoreDep,
    redis: RedisDep,
    last_event_id: Annotated[str | None, Header(max_length=41, pattern=STREAM_ID)] = None,
) -> Response:
    """started, node_started, node_finished, then complete, failed or cancelled, which ends the stream."""
    if last_event_id is not None and not is_stream_id(last_event_id):
        raise HTTPException(422, validation_error("last-event-id", "must be an event id from this stream", "header"))
    record = await find_run(store, tenant, job_id)
    if record["status"] in FINISHED and last_event_id is not None:
        # The client saw the end (an EventSource reconnects after it): say so, or it would wait forever.
        later = await redis.xrange(keys.run_events(tenant, job_id), min=f"({last_event_id}", count=1)
        if not later:
            return Response(status_code=204)

    fanout: EventFanout = request.app.state.event_fanout
    subscription = fanout.subscribe(tenant, keys.run_events(tenant, job_id), last_event_id or "0-0")
    if subscription is None:
        message = f"this tenant has {fanout.open_streams(tenant)} event streams open here; close some first"
        return JSONResponse({"detail": message}, status_code=429, headers={"Retry-After": "5"})
    return _StreamHoldingSlot(_follow(subscription, redis, keys.run(tenant, job_id)), fanout, subscription)


class _StreamHoldingSlot(EventSourceResponse):
    """Gives the tenant's stream slot back however the response ends: the run's end, the client gone
    (even before the first event) or the server stopping."""

    def __init__(self, content: AsyncIterator[dict[str, str]], fanout: EventFanout, subscription: Subscription) -> None:
        super().__init__(content, ping=HEARTBEAT_S)
        self.fanout, self.subscription = fanout, subscription

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.fanout.unsubscribe(self.subscription)


async def _follow(subscription: Subscription, redis: RedisDep, record: str) -> AsyncIterator[dict[str, str]]:
    """The run's events until its end (unless it was retried after: more events follow at once)."""
    while True:
        try:
            entry_id, name, data = await asyncio.wait_for(subscription.entries.get(), HEARTBEAT_S)
        except TimeoutError:
            if not await _still_there(redis, record):
                return  # the run expired meanwhile
            continue
        yield {"id": entry_id, "event": name, "data": data}
        if name in FINISHED and subscription.entries.empty():
            return


async def _still_there(redis: RedisDep, record: str) -> bool:
    try:
        return bool(await redis.exists(record))
    except (RedisError, OSError):
        return True  # Redis is away: the stream waits, and the reader resumes it from its last id
