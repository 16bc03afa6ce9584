"""Acting on a run that stopped: retry a failed or cancelled one, answer one that awaits a person."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Body, HTTPException
from fastapi.responses import JSONResponse

from api.deps import CatalogDep, SettingsDep, StoreDep, TenantDep
from api.errors import error_responses, validation_error
from api.routes.runs import NOT_FOUND, find_run
from api.routing import StrictJSONRoute
from api.schemas import InputRequest, RetryRequest, RunRecord
from infra.timeutil import now_iso
from runs.checkpoint import PREVIEW_CHARS, Checkpoint, RewindError, outputs_of, progress_of, retry_update
from runs.model import JOB_ID, RunStatus
from runs.store import RunStore

router = APIRouter(tags=["runs"], route_class=StrictJSONRoute)


async def _state(store: RunStore, tenant: str, job_id: str) -> dict[str, Any]:
    state = await store.get_state(tenant, job_id) if JOB_ID.match(job_id) else None
    if state is None:
        raise HTTPException(404, NOT_FOUND)
    return state


async def _accepted(store: RunStore, tenant: str, job_id: str) -> JSONResponse:
    return JSONResponse(await find_run(store, tenant, job_id), status_code=202)


@router.post(
    "/run/{job_id}/retry", status_code=202, response_model=RunRecord,
    responses=error_responses(401, 404, 409, 422, 503),
)  # fmt: skip
async def retry_run(
    job_id: str, tenant: TenantDep, store: StoreDep, catalog: CatalogDep,
    body: Annotated[RetryRequest | None, Body()] = None,
) -> JSONResponse:  # fmt: skip
    """Queue a failed or cancelled run again: it resumes at the step that stopped it, or at `from`."""
    state = await _state(store, tenant, job_id)
    if state["status"] not in (RunStatus.FAILED, RunStatus.CANCELLED):
        raise HTTPException(409, f"only a failed or cancelled run can be retried; this one is {state['status']}")
    spec = catalog.flows.get(state["flow"])
    if spec is None:
        raise HTTPException(409, f"this service no longer knows flow {state['flow']!r}")
    from_node = body.from_node if body else None
    try:
        fields, retried = retry_update(state, spec.graph.nodes, spec.graph.start, from_node)
    except RewindError as exc:
        raise HTTPException(422, validation_error("from", str(exc))) from None
    outcome = await store.retry(tenant, state, fields, [("retried", retried)])
    if outcome == "missing":
        raise HTTPException(404, NOT_FOUND)
    if outcome != "queued":
        raise HTTPException(409, "the run changed meanwhile; read it again")
    return await _accepted(store, tenant, job_id)


@router.post(
    "/run/{job_id}/input", status_code=202, response_model=RunRecord,
    responses=error_responses(401, 404, 409, 422, 503),
)  # fmt: skip
async def answer_input(
    job_id: str, body: InputRequest, tenant: TenantDep, store: StoreDep, catalog: CatalogDep, settings: SettingsDep
) -> JSONResponse:
    """Answer the human step a run awaits: it goes on along the chosen action's edge, exactly once."""
    state = await _state(store, tenant, job_id)
    awaiting = state["awaiting"]
    if state["status"] != RunStatus.AWAITING_INPUT or awaiting is None:
        raise HTTPException(409, f"the run is not awaiting input; it is {state['status']}")
    if body.action not in awaiting["actions"]:
        raise HTTPException(422, validation_error("action", f"the step offers the actions {awaiting['actions']}"))
    if body.text is not None and len(body.text.encode()) > settings.max_input_bytes:
        raise HTTPException(422, validation_error("text", f"over STORYFLOW_MAX_INPUT_BYTES={settings.max_input_bytes}"))
    spec = catalog.flows.get(state["flow"])
    if spec is None or awaiting["node"] not in spec.graph.nodes:
        raise HTTPException(409, f"this service no longer knows flow {state['flow']!r} or its node")
    node = spec.graph.nodes[awaiting["node"]]
    checkpoint = Checkpoint.from_json(state["checkpoint"])
    output = body.text if body.text is not None else checkpoint.current
    steps = state["steps"]
    steps[-1].update(status="complete", action=body.action, output=output, finished_at=now_iso())
    checkpoint.current, checkpoint.next = output, (node.on or {}).get(body.action)
    fields = {
        "status": RunStatus.QUEUED, "awaiting": None, "steps": steps, "checkpoint": checkpoint.to_json(),
        "progress": progress_of(steps, state["progress"]["total"]), "outputs": outputs_of(steps),
    }  # fmt: skip
    finished = {"node": node.name, "preview": output[:PREVIEW_CHARS], "action": body.action}
    # The answer counts only if the run still awaits this very question (runs/lua/answer.lua).
    asked = orjson.dumps(awaiting).decode()
    if await store.answer(tenant, state, asked, fields, [("node_finished", finished)]) != "queued":
        raise HTTPException(409, "the run is no longer awaiting this input (answered or cancelled meanwhile)")
    return await _accepted(store, tenant, job_id)
