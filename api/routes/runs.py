"""Submitting, reading, cancelling and listing runs."""

from __future__ import annotations

import re
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from agents.registry import Catalog
from api.deps import CatalogDep, RedisDep, SettingsDep, StoreDep, TenantDep
from api.errors import EscapedJSONResponse, error_responses, unavailable, validation_error
from api.routing import StrictJSONRoute
from api.schemas import ID_PATTERN, JOB_ID_PATTERN, BatchRequest, RunAccepted, RunRecord, RunRequest, RunStatusName
from api.waiting import FinishedRuns
from infra import safe_url
from infra.settings import Settings
from memory.store import missing_documents
from runs.model import SubmitOutcome
from runs.store import RunStore

router = APIRouter(tags=["runs"], route_class=StrictJSONRoute)
_JOB_ID = re.compile(JOB_ID_PATTERN)
NOT_FOUND = "run not found"


def check_run_request(body: RunRequest, catalog: Catalog, settings: Settings) -> None:
    """The checks that depend on configuration; raises a 422 like pydantic's own."""
    if body.flow not in catalog.flows:
        known = ", ".join(sorted(catalog.flows))
        raise HTTPException(422, validation_error("flow", f"unknown flow {body.flow!r}; known flows: {known}"))
    size = len(body.input.encode())
    if size > settings.max_input_bytes:
        message = f"input is {size} bytes; the limit is STORYFLOW_MAX_INPUT_BYTES={settings.max_input_bytes}"
        raise HTTPException(422, validation_error("input", message))


async def check_webhook(url: str | None, settings: Settings, cache: dict[str, str | None] | None = None) -> None:
    """A 422 unless webhooks are configured and the URL may be called (infra/safe_url.py); `cache` keeps
    the verdict per URL while one request checks many."""
    if url is None:
        return
    if settings.webhook_secret is None:
        raise HTTPException(422, validation_error("webhook", "webhooks need STORYFLOW_WEBHOOK_SECRET on the server"))
    cache = {} if cache is None else cache
    if url not in cache:
        try:
            await safe_url.check(url, allow_private=settings.webhook_allow_private)
            cache[url] = None
        except safe_url.UnsafeURLError as exc:
            cache[url] = str(exc)
    if (verdict := cache[url]) is not None:
        raise HTTPException(422, validation_error("webhook", verdict))


def submit_fields(body: RunRequest, catalog: Catalog, idempotency_key: str | None) -> dict[str, Any]:
    total = len(catalog.flows[body.flow].agents)
    return {
        "flow": body.flow, "story_id": body.story_id, "input": body.input, "total": total,
        "idempotency_key": idempotency_key, "webhook": body.webhook,
    }  # fmt: skip


def accepted(job_id: str) -> JSONResponse:
    body = RunAccepted(job_id=job_id, status="queued", pending_docs=None).model_dump()
    return JSONResponse(body, status_code=202, headers={"Location": f"/run/{job_id}"})


def refused(outcome: SubmitOutcome) -> JSONResponse:
    if outcome.status == "full":
        return unavailable("the queue is full; retry later")
    message = {
        "too_many_active": "too many runs queued or running for this tenant; retry later",
        "rate_limited": "too many submissions this minute for this tenant; retry later",
    }[outcome.status]
    return JSONResponse({"detail": message}, status_code=429, headers={"Retry-After": str(outcome.retry_after_s)})


@router.post(
    "/run",
    status_code=202,
    response_model=RunAccepted,
    responses={
        200: {"model": RunRecord | RunAccepted, "description": "pending_docs, or the finished run with ?wait"},
        **error_responses(400, 401, 413, 422, 429, 503),
    },
)
async def submit_run(
    request: Request,
    body: RunRequest,
    tenant: TenantDep,
    store: StoreDep,
    redis: RedisDep,
    catalog: CatalogDep,
    settings: SettingsDep,
    wait: Annotated[float | None, Query(ge=0, le=60, description="seconds to hold for the result")] = None,
    idempotency_key: Annotated[str | None, Header(max_length=256)] = None,
) -> Response:
    check_run_request(body, catalog, settings)
    await check_webhook(body.webhook, settings)
    missing = await missing_documents(redis, tenant, list(catalog.flows[body.flow].requires_docs))
    if missing:
        return JSONResponse(RunAccepted(job_id=None, status="pending_docs", pending_docs=missing).model_dump())
    job_id = uuid.uuid4().hex
    finished_runs: FinishedRuns = request.app.state.finished_runs
    with finished_runs.watching(tenant, job_id) as woken:  # before the submit: its end cannot be missed
        outcome = await store.submit(tenant, job_id, **submit_fields(body, catalog, idempotency_key))
        if outcome.status == "mismatch":
            message = "this Idempotency-Key was used with a different body (flow, story_id, input); use a new key"
            raise HTTPException(422, validation_error("idempotency-key", message, "header"))
        if outcome.status not in ("queued", "existing") or outcome.job_id is None:
            return refused(outcome)
        if wait:
            if outcome.job_id == job_id:
                stopped = await finished_runs.until(woken, tenant, job_id, wait)
            else:  # an earlier run of this Idempotency-Key, which may have stopped already
                stopped = await finished_runs.wait(tenant, outcome.job_id, wait)
            record = await store.get_json(tenant, outcome.job_id) if stopped else None
            if record is not None:
                return Response(record, media_type="application/json")
    return accepted(outcome.job_id)


async def find_run(store: RunStore, tenant: str, job_id: str) -> dict[str, Any]:
    record = await store.get(tenant, job_id) if _JOB_ID.match(job_id) else None
    if record is None:
        raise HTTPException(404, NOT_FOUND)
    return record


@router.get("/run/{job_id}", response_model=RunRecord, responses=error_responses(401, 404, 503))
async def get_run(job_id: str, tenant: TenantDep, store: StoreDep) -> Response:
    record = await store.get_json(tenant, job_id) if _JOB_ID.match(job_id) else None
    if record is None:
        raise HTTPException(404, NOT_FOUND)
    return Response(record, media_type="application/json")


@router.delete("/run/{job_id}", response_model=RunRecord, responses=error_responses(401, 404, 409, 503))
async def cancel_run(job_id: str, tenant: TenantDep, store: StoreDep) -> dict[str, Any]:
    record = await find_run(store, tenant, job_id)
    outcome = await store.cancel(tenant, job_id, record["story_id"])
    if outcome == "missing":
        raise HTTPException(404, NOT_FOUND)
    if outcome == "finished":
        raise HTTPException(409, "the run has already finished")
    return await find_run(store, tenant, job_id)


@router.get("/runs", response_model=list[RunRecord], responses=error_responses(401, 422, 503))
async def list_runs(
    response: Response,
    tenant: TenantDep,
    store: StoreDep,
    story_id: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
    batch_id: Annotated[str | None, Query(pattern=JOB_ID_PATTERN)] = None,
    run_status: Annotated[RunStatusName | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[
        str | None, Query(pattern=r"^\d{1,20}:[0-9a-f]{32}$", description="X-Next-Cursor of the previous page")
    ] = None,
) -> list[dict[str, Any]]:
    runs, next_cursor = await store.list_page(
        tenant, story_id=story_id, status=run_status, limit=limit, cursor=cursor, batch_id=batch_id
    )
    if next_cursor:
        response.headers["X-Next-Cursor"] = next_cursor
    return runs


@router.post(
    "/runs/batch",
    response_model=list[dict[str, Any]],
    responses=error_responses(400, 401, 413, 422, 503),
)
async def submit_batch(
    body: BatchRequest,
    tenant: TenantDep,
    store: StoreDep,
    redis: RedisDep,
    catalog: CatalogDep,
    settings: SettingsDep,
) -> Response:
    items = body.runs
    if len(items) > settings.max_batch_runs:
        message = f"body must be {{'runs': [...]}} with at most {settings.max_batch_runs} runs"
        raise HTTPException(422, validation_error("runs", message))
    answers, ready = await prepare_runs(items, redis, tenant, catalog, settings)
    outcomes = await store.submit_many(
        [(tenant, uuid.uuid4().hex, submit_fields(run, catalog, None)) for _, run in ready]
    )
    for (position, _), outcome in zip(ready, outcomes, strict=True):
        answers[position] = batch_answer(outcome)
    return EscapedJSONResponse(answers)


async def prepare_runs(
    items: list[dict[str, Any]], redis: RedisDep, tenant: str, catalog: Catalog, settings: Settings
) -> tuple[list[dict[str, Any] | None], list[tuple[int, RunRequest]]]:
    """Check each run body of a batch: the answers of those that cannot run (invalid, pending_docs),
    and the (position, run) of those to submit."""
    answers: list[dict[str, Any] | None] = [None] * len(items)
    checked: list[tuple[int, RunRequest]] = []
    webhooks: dict[str, str | None] = {}
    for position, raw in enumerate(items):
        try:
            run = RunRequest.model_validate(raw)
            check_run_request(run, catalog, settings)
            await check_webhook(run.webhook, settings, webhooks)
        except ValidationError as exc:
            answers[position] = invalid(exc.errors(include_url=False, include_context=False))
        except HTTPException as exc:
            answers[position] = invalid(exc.detail)
        else:
            checked.append((position, run))
    return answers, await _with_docs(redis, tenant, catalog, checked, answers)


def invalid(detail: Any) -> dict[str, Any]:
    return {"job_id": None, "status": "invalid", "pending_docs": None, "error": detail}


def batch_answer(outcome: SubmitOutcome) -> dict[str, Any]:
    if outcome.status not in ("queued", "existing"):
        return {"job_id": None, "status": "rejected", "pending_docs": None, "error": outcome.status}
    return {"job_id": outcome.job_id, "status": "queued", "pending_docs": None}


async def _with_docs(
    redis: RedisDep, tenant: str, catalog: Catalog, runs: list[tuple[int, RunRequest]],
    answers: list[dict[str, Any] | None],
) -> list[tuple[int, RunRequest]]:  # fmt: skip
    """The runs whose documents are all there; the others answered pending_docs."""
    needed = sorted({doc for _, run in runs for doc in catalog.flows[run.flow].requires_docs})
    missing = set(await missing_documents(redis, tenant, needed))
    ready = []
    for position, run in runs:
        pending = [doc for doc in catalog.flows[run.flow].requires_docs if doc in missing]
        if pending:
            answers[position] = {"job_id": None, "status": "pending_docs", "pending_docs": pending}
        else:
            ready.append((position, run))
    return ready
