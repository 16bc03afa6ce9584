"""Batches of runs: submitted in one request, followed by their counts, cancelled or retried as one."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
import zlib
from collections import Counter
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request
from fastapi.responses import JSONResponse

from api.deps import CatalogDep, RedisDep, SettingsDep, StoreDep, TenantDep
from api.errors import EscapedJSONResponse, error_responses, validation_error
from api.routes.runs import batch_answer, check_webhook, prepare_runs, submit_fields
from api.routing import StrictJSONRoute
from api.schemas import Batch, BatchCreated, BatchesRequest, RunRequest
from runs.batches import BatchStore, batch_job_id
from runs.checkpoint import RewindError, retry_update
from runs.model import JOB_ID, RunStatus

NOT_FOUND = "batch not found"
SUBMIT_CHUNK = 500  # runs per pipelined round trip
SUBMIT_STREAMS = 4
UNFINISHED = {RunStatus.QUEUED, RunStatus.IN_PROGRESS, RunStatus.AWAITING_INPUT}


async def get_batches(request: Request) -> BatchStore:
    batches: BatchStore = request.app.state.batches
    return batches


BatchesDep = Annotated[BatchStore, Depends(get_batches)]


def _digest(body: BatchesRequest) -> str:
    return hashlib.sha256(orjson.dumps([body.runs, body.webhook], option=orjson.OPT_SORT_KEYS)).hexdigest()


async def create_batch(
    body: BatchesRequest, tenant: TenantDep, store: StoreDep, batches: BatchesDep, redis: RedisDep,
    catalog: CatalogDep, settings: SettingsDep, idempotency_key: Annotated[str | None, Header(max_length=256)] = None,
) -> JSONResponse:  # fmt: skip
    """Submit up to 10000 runs as one batch. The same Idempotency-Key again answers the same batch (and
    submits whatever of it an interrupted first request did not)."""
    await check_webhook(body.webhook, settings)
    opened = await batches.open(
        tenant, uuid.uuid4().hex, total=len(body.runs), webhook=body.webhook, idempotency_key=idempotency_key,
        digest=_digest(body),
    )  # fmt: skip
    if opened.status == "mismatch":
        message = "this Idempotency-Key was used with a different batch; use a new key"
        raise HTTPException(422, validation_error("idempotency-key", message, "header"))
    answers, ready = await prepare_runs(body.runs, redis, tenant, catalog, settings)
    in_batch = {"batch_id": opened.batch_id}

    async def submit_stream(stream: list[tuple[int, RunRequest]]) -> None:
        for start in range(0, len(stream), SUBMIT_CHUNK):
            chunk = stream[start : start + SUBMIT_CHUNK]
            outcomes = await store.submit_many([
                (tenant, batch_job_id(opened.batch_id, position), {**submit_fields(run, catalog, None), **in_batch})
                for position, run in chunk
            ])  # fmt: skip
            for (position, _), outcome in zip(chunk, outcomes, strict=True):
                answers[position] = batch_answer(outcome)

    # A few streams at once (one encodes while Redis runs another's scripts); a story's runs all go
    # through one stream, so they are queued in the batch's order.
    streams: list[list[tuple[int, RunRequest]]] = [[] for _ in range(SUBMIT_STREAMS)]
    for position, run in ready:
        streams[zlib.crc32(run.story_id.encode()) % SUBMIT_STREAMS].append((position, run))
    try:
        async with asyncio.TaskGroup() as group:
            for stream in filter(None, streams):
                group.create_task(submit_stream(stream))
    except ExceptionGroup as failed:  # answered as that error alone (a 503 for Redis away)
        raise failed.exceptions[0] from None
    tally = Counter(answer["status"] for answer in answers if answer)
    counts = {status: tally[status] for status in ("pending_docs", "invalid", "rejected")}
    await batches.seal(tenant, opened.batch_id, counts=counts, items=answers)
    created = {"batch_id": opened.batch_id, "items": answers}
    return EscapedJSONResponse(created, status_code=201 if opened.status == "created" else 200)


async def _find(batches: BatchStore, tenant: str, batch_id: str) -> dict[str, Any]:
    batch = await batches.get(tenant, batch_id)
    if batch is None:
        raise HTTPException(404, NOT_FOUND)
    return batch


async def list_batches(
    tenant: TenantDep, batches: BatchesDep, limit: Annotated[int, Query(ge=1, le=500)] = 50
) -> list[dict[str, Any]]:
    """The tenant's batches, newest first."""
    return await batches.list_recent(tenant, limit)


async def get_batch(batch_id: str, tenant: TenantDep, batches: BatchesDep) -> dict[str, Any]:
    return await _find(batches, tenant, _checked(batch_id))


async def cancel_batch(batch_id: str, tenant: TenantDep, store: StoreDep, batches: BatchesDep) -> dict[str, Any]:
    """Cancel every unfinished run of the batch; answers the counts after."""
    await _find(batches, tenant, _checked(batch_id))
    job_ids = await batches.run_ids(tenant, batch_id)
    for start in range(0, len(job_ids), SUBMIT_CHUNK):
        records = await store.get_many(tenant, job_ids[start : start + SUBMIT_CHUNK])
        unfinished = [(r["job_id"], r["story_id"]) for r in records if r and r["status"] in UNFINISHED]
        await store.cancel_many(tenant, unfinished)
    return await _find(batches, tenant, batch_id)


async def retry_batch(
    batch_id: str, tenant: TenantDep, store: StoreDep, batches: BatchesDep, catalog: CatalogDep
) -> dict[str, Any]:
    """Retry every failed run of the batch (each resumes at the step that failed); answers the counts after."""
    await _find(batches, tenant, _checked(batch_id))
    job_ids = await batches.run_ids(tenant, batch_id)
    for start in range(0, len(job_ids), SUBMIT_CHUNK):
        states = await store.get_states(tenant, job_ids[start : start + SUBMIT_CHUNK])
        retries = []
        for state in states:
            spec = catalog.flows.get(state["flow"]) if state else None
            if state is None or spec is None or state["status"] != RunStatus.FAILED:
                continue
            try:
                fields, retried = retry_update(state, spec.graph.nodes, spec.graph.start, None)
            except RewindError:
                continue
            retries.append((state, fields, [("retried", retried)]))
        await store.retry_many(tenant, retries)
    return await _find(batches, tenant, batch_id)


def _checked(batch_id: str) -> str:
    if not JOB_ID.match(batch_id):
        raise HTTPException(404, NOT_FOUND)
    return batch_id


def build_router(max_body_bytes: int) -> APIRouter:
    """The batch routes; POST /batches takes a bigger body than the other routes (up to 10000 runs)."""
    router = APIRouter(tags=["batches"], route_class=StrictJSONRoute)
    created: dict[int | str, dict[str, Any]] = {
        200: {"model": BatchCreated, "description": "this Idempotency-Key's batch"}
    }
    router.add_api_route(
        "/batches", create_batch, methods=["POST"], status_code=201, response_model=BatchCreated,
        responses={**created, **error_responses(400, 401, 413, 422, 503)}, max_body_size=max_body_bytes,
    )  # fmt: skip
    router.add_api_route(
        "/batches", list_batches, methods=["GET"], response_model=list[Batch], responses=error_responses(401, 503)
    )
    batch_responses = error_responses(401, 404, 503)
    router.add_api_route(
        "/batches/{batch_id}", get_batch, methods=["GET"], response_model=Batch, responses=batch_responses
    )
    router.add_api_route(
        "/batches/{batch_id}", cancel_batch, methods=["DELETE"], response_model=Batch, responses=batch_responses
    )
    router.add_api_route(
        "/batches/{batch_id}/retry", retry_batch, methods=["POST"], response_model=Batch, responses=batch_responses
    )
    return router
