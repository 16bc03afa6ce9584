"""Server-Sent Events of a run's progress, from its Redis stream: any API process can serve any run."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException
from sse_starlette import EventSourceResponse

from api.deps import RedisDep, StoreDep, TenantDep
from api.errors import error_responses, validation_error
from api.routes.runs import find_run
from api.waiting import read_events

router = APIRouter(tags=["runs"])
HEARTBEAT_S = 15
STREAM_ID = r"^\d{1,20}-\d{1,20}$"


@router.get(
    "/run/{job_id}/events",
    response_class=EventSourceResponse,
    responses={200: {"content": {"text/event-stream": {}}}, **error_responses(401, 404, 422, 503)},
)
async def run_events(
    job_id: str,
    tenant: TenantDep,
    store: StoreDep,
    redis: RedisDep,
    last_event_id: Annotated[str | None, Header(max_length=64)] = None,
) -> EventSourceResponse:
    """started, node_started, node_finished, then complete, failed or cancelled, which ends the stream."""
    if last_event_id is not None and not re.match(STREAM_ID, last_event_id):
        raise HTTPException(422, validation_error("last-event-id", "must be an event id from this stream", "header"))
    await find_run(store, tenant, job_id)

    async def stream() -> AsyncIterator[dict[str, str]]:
        async for entry_id, name, data in read_events(redis, tenant, job_id, after=last_event_id or "0-0"):
            yield {"id": entry_id, "event": name, "data": data}

    return EventSourceResponse(stream(), ping=HEARTBEAT_S)
