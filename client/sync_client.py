"""Blocking client for the storyflow HTTP API: the async client's code, run for you.

There is one implementation of the protocol, `AsyncStoryflowClient` (with client/_protocol.py);
this face runs it on an event loop of its own in a helper thread (anyio's blocking portal), so
both faces behave the same by construction, timeouts included. Do not call it from inside a
running event loop: use `AsyncStoryflowClient` there.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator
from functools import partial
from types import TracebackType
from typing import Any, ParamSpec, Self, TypeVar

import httpx
from anyio.from_thread import start_blocking_portal

from client import _protocol as protocol
from client.async_client import AsyncStoryflowClient
from client.models import (
    Batch,
    BatchCreated,
    BatchItem,
    DocInfo,
    Document,
    DocWritten,
    FlowInfo,
    RunEvent,
    RunRecord,
    SubmitResult,
)

P = ParamSpec("P")
T = TypeVar("T")


class StoryflowClient:
    def __init__(
        self,
        base_url: str = protocol.DEFAULT_URL,
        api_key: str | None = None,
        *,
        timeout: float = protocol.DEFAULT_TIMEOUT,
        poll_schedule: protocol.PollSchedule | None = None,
        transport: httpx.AsyncBaseTransport | None = None,  # an httpx.MockTransport serves both faces
    ) -> None:
        self._portal_context = start_blocking_portal()
        self._portal = self._portal_context.__enter__()
        self._async = AsyncStoryflowClient(
            base_url, api_key, timeout=timeout, poll_schedule=poll_schedule, transport=transport
        )

    def _run(self, method: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        return self._portal.call(partial(method, *args, **kwargs))  # type: ignore[arg-type]

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._run(self._async.aclose)
        self._portal_context.__exit__(None, None, None)

    @property
    def base_url(self) -> httpx.URL:
        return self._async.base_url

    @property
    def poll_schedule(self) -> protocol.PollSchedule:
        return self._async.poll_schedule

    def submit(
        self,
        story_id: str,
        input: str,
        flow: str = "default",
        *,
        idempotency_key: str | None = None,
        wait: float | None = None,
    ) -> SubmitResult:
        return self._run(self._async.submit, story_id, input, flow, idempotency_key=idempotency_key, wait=wait)

    def get(self, job_id: str) -> RunRecord:
        return self._run(self._async.get, job_id)

    def cancel(self, job_id: str) -> RunRecord:
        return self._run(self._async.cancel, job_id)

    def retry(self, job_id: str, from_node: str | None = None) -> RunRecord:
        """Queue a failed or cancelled run again, at the step that stopped it or at `from_node`."""
        return self._run(self._async.retry, job_id, from_node)

    def answer(self, job_id: str, action: str, text: str | None = None) -> RunRecord:
        """Answer the human step a run awaits."""
        return self._run(self._async.answer, job_id, action, text)

    def list_runs(
        self, story_id: str | None = None, status: str | None = None, limit: int | None = None
    ) -> list[RunRecord]:
        return self._run(self._async.list_runs, story_id, status, limit)

    def batch(self, runs: list[dict[str, Any]]) -> list[BatchItem]:
        return self._run(self._async.batch, runs)

    def runs(
        self,
        *,
        batch_id: str | None = None,
        story_id: str | None = None,
        status: str | None = None,
        page_size: int = protocol.RUNS_PAGE_SIZE,
    ) -> list[RunRecord]:
        """Every run that matches (a batch's, a story's, ...), newest first, read page by page."""
        return self._run(self._async.runs, batch_id=batch_id, story_id=story_id, status=status, page_size=page_size)

    def runs_page(
        self,
        *,
        batch_id: str | None = None,
        story_id: str | None = None,
        status: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> tuple[list[RunRecord], str | None]:
        """One page of `GET /runs` and the cursor of the next page (None after the last)."""
        return self._run(
            self._async.runs_page, batch_id=batch_id, story_id=story_id, status=status, limit=limit, cursor=cursor
        )

    def create_batch(
        self,
        runs: list[dict[str, Any]],
        webhook: str | None = None,
        idempotency_key: str | None = None,
    ) -> BatchCreated:
        """`POST /batches`: up to 10000 runs as one batch; the same `idempotency_key` again answers that batch."""
        return self._run(self._async.create_batch, runs, webhook, idempotency_key)

    def get_batch(self, batch_id: str) -> Batch:
        return self._run(self._async.get_batch, batch_id)

    def list_batches(self, limit: int | None = None) -> list[Batch]:
        """The tenant's batches, newest first."""
        return self._run(self._async.list_batches, limit)

    def cancel_batch(self, batch_id: str) -> Batch:
        """Cancel the batch's unfinished runs; the batch after."""
        return self._run(self._async.cancel_batch, batch_id)

    def retry_batch(self, batch_id: str) -> Batch:
        """Retry the batch's failed runs; the batch after."""
        return self._run(self._async.retry_batch, batch_id)

    def flows(self) -> list[FlowInfo]:
        return self._run(self._async.flows)

    def put_doc(self, doc_id: str, content: str) -> DocWritten:
        return self._run(self._async.put_doc, doc_id, content)

    def get_doc(self, doc_id: str) -> Document:
        return self._run(self._async.get_doc, doc_id)

    def list_docs(self) -> list[DocInfo]:
        return self._run(self._async.list_docs)

    def delete_doc(self, doc_id: str) -> None:
        self._run(self._async.delete_doc, doc_id)

    def events(self, job_id: str, last_event_id: str | None = None) -> Generator[RunEvent, None, None]:
        """The run's events until a terminal one (included) or until the server ends the stream."""
        events = self._async.events(job_id, last_event_id)
        try:
            while True:
                try:
                    yield self._run(events.__anext__)
                except StopAsyncIteration:
                    return
        finally:
            self._run(events.aclose)

    def wait(
        self,
        job_id: str,
        timeout: float | None = None,
        *,
        on_event: protocol.EventCallback | None = None,
    ) -> RunRecord:
        """Follow the run's events until it finishes (or awaits a person), then return its record.

        Falls back to polling with backoff when the event stream is unavailable; `on_event` is called
        from the client's helper thread.
        """
        return self._run(self._async.wait, job_id, timeout, on_event=on_event)
