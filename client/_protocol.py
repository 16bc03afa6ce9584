"""What the sync and async clients share: request shapes, response parsing, timing."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import httpx_sse
from pydantic import BaseModel, ValidationError

from client.errors import error_from_response, unexpected_body
from client.models import (
    Batch,
    BatchCreated,
    BatchInvalid,
    BatchItem,
    BatchRejected,
    DocInfo,
    Document,
    DocWritten,
    FlowInfo,
    PendingDocs,
    RunAccepted,
    RunEvent,
    RunRecord,
    SubmitResult,
)

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = 30.0
MAX_BATCH_SIZE = 1000  # runs per POST /runs/batch
MAX_BATCHES_SIZE = 10000  # runs per POST /batches
RUNS_PAGE_SIZE = 500  # the most GET /runs gives in one page
NEXT_CURSOR = "X-Next-Cursor"
EVENT_STREAM_RETRIES = 3
# Answers to `?wait=` arrive only after the wait, so the read timeout must outlast it.
SERVER_WAIT_MARGIN = 15.0

EventCallback = Callable[[RunEvent], None]
ModelT = TypeVar("ModelT", bound=BaseModel)


@dataclass(frozen=True)
class PollSchedule:
    first_delay: float = 0.25
    max_delay: float = 2.0
    factor: float = 1.5

    def next_delay(self, delay: float) -> float:
        return min(delay * self.factor, self.max_delay)


@dataclass
class Deadline:
    timeout: float | None
    started: float = field(default_factory=time.monotonic)

    @property
    def remaining(self) -> float | None:
        if self.timeout is None:
            return None
        return max(0.0, self.timeout - (time.monotonic() - self.started))

    @property
    def expired(self) -> bool:
        remaining = self.remaining
        return remaining is not None and remaining <= 0

    def clamp(self, delay: float) -> float:
        remaining = self.remaining
        return delay if remaining is None else min(delay, remaining)


def default_headers(api_key: str | None) -> dict[str, str]:
    headers = {"Accept": "application/json", "User-Agent": "storyflow-client"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


@dataclass(frozen=True)
class SubmitRequest:
    body: dict[str, Any]
    headers: dict[str, str]
    params: dict[str, str]
    timeout: httpx.Timeout | None


def submit_request(
    story_id: str,
    input: str,
    flow: str,
    idempotency_key: str | None,
    wait: float | None,
    client_timeout: httpx.Timeout,
) -> SubmitRequest:
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    params = {"wait": f"{wait:g}"} if wait is not None else {}
    timeout = None
    if wait is not None:
        read = (client_timeout.read or DEFAULT_TIMEOUT) + wait + SERVER_WAIT_MARGIN
        timeout = httpx.Timeout(client_timeout.connect, read=read)
    body = {"story_id": story_id, "input": input, "flow": flow}
    return SubmitRequest(body=body, headers=headers, params=params, timeout=timeout)


def runs_query(
    story_id: str | None,
    status: str | None,
    limit: int | None,
    *,
    batch_id: str | None = None,
    cursor: str | None = None,
) -> dict[str, str]:
    query = {
        "story_id": story_id,
        "status": status,
        "limit": None if limit is None else str(limit),
        "batch_id": batch_id,
        "cursor": cursor,
    }
    return {key: value for key, value in query.items() if value is not None}


@dataclass(frozen=True)
class BatchesRequest:
    body: dict[str, Any]
    headers: dict[str, str]


def batches_request(runs: list[dict[str, Any]], webhook: str | None, idempotency_key: str | None) -> BatchesRequest:
    body: dict[str, Any] = {"runs": runs} | ({} if webhook is None else {"webhook": webhook})
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    return BatchesRequest(body=body, headers=headers)


def batches_query(limit: int | None) -> dict[str, str]:
    return {} if limit is None else {"limit": str(limit)}


def retry_body(from_node: str | None) -> dict[str, str]:
    return {} if from_node is None else {"from": from_node}


def input_body(action: str, text: str | None) -> dict[str, str]:
    return {"action": action} | ({} if text is None else {"text": text})


def events_headers(last_event_id: str | None) -> dict[str, str]:
    return {"Last-Event-ID": last_event_id} if last_event_id else {}


def stream_timeout(client_timeout: httpx.Timeout, deadline: Deadline | None) -> httpx.Timeout:
    read = None if deadline is None else deadline.remaining
    return httpx.Timeout(client_timeout.connect, read=read)


def event_from_sse(sse: httpx_sse.ServerSentEvent) -> RunEvent | None:
    # httpx-sse dispatches an empty "message" for every keep-alive once an id was seen;
    # the SSE spec says an event without data is not dispatched.
    if not sse.data and sse.event == "message":
        return None
    return RunEvent.from_sse(sse.event, sse.id, sse.data)


def checked_json(response: httpx.Response) -> Any:
    if response.is_error:
        raise error_from_response(response)
    try:
        return response.json()
    except ValueError as exc:
        raise unexpected_body(response, f"not JSON ({exc})") from None


def parse_model(model: type[ModelT], data: Any, response: httpx.Response) -> ModelT:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise unexpected_body(response, _first_validation_problem(exc)) from None


def parse_list(model: type[ModelT], response: httpx.Response, *wrapper_keys: str) -> list[ModelT]:
    items = _unwrap_list(checked_json(response), wrapper_keys, response)
    return [parse_model(model, item, response) for item in items]


def parse_submit(response: httpx.Response) -> SubmitResult:
    body = checked_json(response)
    if not isinstance(body, Mapping):
        raise unexpected_body(response, "expected a JSON object")
    if body.get("status") == "pending_docs":
        return parse_model(PendingDocs, body, response)
    if "enqueued_at" in body or "progress" in body:
        return parse_model(RunRecord, body, response)
    return parse_model(RunAccepted, body, response)


def parse_batch(response: httpx.Response) -> list[BatchItem]:
    items = _unwrap_list(checked_json(response), ("results", "runs", "items"), response)
    return [_parse_batch_item(item, response) for item in items]


def parse_batch_created(response: httpx.Response) -> BatchCreated:
    body = checked_json(response)
    if not isinstance(body, Mapping) or not isinstance(body.get("batch_id"), str):
        raise unexpected_body(response, "expected a JSON object with a batch_id")
    items = [_parse_batch_item(item, response) for item in _unwrap_list(body, ("items",), response)]
    return BatchCreated(batch_id=body["batch_id"], items=items, created=response.status_code == 201)


def parse_batch_info(response: httpx.Response) -> Batch:
    return parse_model(Batch, checked_json(response), response)


def parse_batches(response: httpx.Response) -> list[Batch]:
    return parse_list(Batch, response, "batches", "items")


def parse_runs_page(response: httpx.Response) -> tuple[list[RunRecord], str | None]:
    """One page of `GET /runs` and the cursor of the next (None: that was the last page)."""
    return parse_runs(response), response.headers.get(NEXT_CURSOR) or None


def parse_record(response: httpx.Response) -> RunRecord:
    return parse_model(RunRecord, checked_json(response), response)


def parse_document(response: httpx.Response) -> Document:
    return parse_model(Document, checked_json(response), response)


def parse_doc_written(response: httpx.Response, doc_id: str) -> DocWritten:
    if response.is_error:
        raise error_from_response(response)
    body = _json_object_or_empty(response)
    created = response.status_code == 201
    return parse_model(DocWritten, {"doc_id": doc_id, **body, "created": created}, response)


def parse_flows(response: httpx.Response) -> list[FlowInfo]:
    return parse_list(FlowInfo, response, "flows", "items")


def parse_runs(response: httpx.Response) -> list[RunRecord]:
    return parse_list(RunRecord, response, "runs", "items")


def parse_docs(response: httpx.Response) -> list[DocInfo]:
    return parse_list(DocInfo, response, "docs", "items")


def raise_for_error(response: httpx.Response) -> None:
    if response.is_error:
        raise error_from_response(response)


def _parse_batch_item(item: Any, response: httpx.Response) -> BatchItem:
    status = item.get("status") if isinstance(item, Mapping) else None
    if status == "pending_docs":
        return parse_model(PendingDocs, item, response)
    if status == "invalid":
        return parse_model(BatchInvalid, item, response)
    if status == "rejected":
        return parse_model(BatchRejected, item, response)
    return parse_model(RunAccepted, item, response)


def _unwrap_list(body: Any, wrapper_keys: tuple[str, ...], response: httpx.Response) -> list[Any]:
    if isinstance(body, list):
        return body
    if isinstance(body, Mapping):
        for key in wrapper_keys:
            if isinstance(body.get(key), list):
                return list(body[key])
    raise unexpected_body(response, "expected a JSON list")


def _json_object_or_empty(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return dict(body) if isinstance(body, Mapping) else {}


def _first_validation_problem(exc: ValidationError) -> str:
    error = exc.errors()[0]
    location = ".".join(str(part) for part in error["loc"])
    return f"{location}: {error['msg']}" if location else error["msg"]
