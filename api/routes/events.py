"""Server-Sent Events of a run's progress, from its Redis stream: any API process can serve any run."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Response
from sse_starlette import EventSourceResponse

from api.deps import RedisDep, StoreDep, TenantDep
from api.errors import error_responses, validation_error
from api.routes.runs import find_run
from api.waiting import TERMINAL_EVENTS, read_events
from infra import keys

router = APIRouter(tags=["runs"])
HEARTBEAT_S = 15
STREAM_ID = r"^\d{1,20}-\d{1,20}$"
MAX_STREAM_PART = 2**64 - 1  # Redis refuses a stream id with a larger part
FINISHED = frozenset(TERMINAL_EVENTS)


def is_stream_id(value: str) -> bool:
    match = re.fullmatch(r"(\d{1,20})-(\d{1,20})", value)
    return match is not None and all(int(part) <= MAX_STREAM_PART for part in match.groups())


@router.get(
    "/run/{job_id}/events",
    response_class=EventSourceResponse,
    responses={
        200: {"content": {"text/event-stream": {}}},
        204: {"description": "the run has finished and sent every event after Last-Event-ID: do not reconnect"},
        **error_responses(401, 404, 422, 503),
    },
)
async def run_events(
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

    async def stream() -> AsyncIterator[dict[str, str]]:
        async for entry_id, name, data in read_events(redis, tenant, job_id, after=last_event_id or "0-0"):
            yield {"id": entry_id, "event": name, "data": data}

    return EventSourceResponse(stream(), ping=HEARTBEAT_S)
