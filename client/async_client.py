"""Asyncio client for the storyflow HTTP API, the twin of `StoryflowClient`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from contextlib import aclosing
from types import TracebackType
from typing import Any, Self

import httpx
import httpx_sse

from client import _protocol as protocol
from client.errors import StoryflowError, WaitTimeout, error_from_response, error_from_transport
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


class AsyncStoryflowClient:
    def __init__(
        self,
        base_url: str = protocol.DEFAULT_URL,
        api_key: str | None = None,
        *,
        timeout: float = protocol.DEFAULT_TIMEOUT,
        poll_schedule: protocol.PollSchedule | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.poll_schedule = poll_schedule or protocol.PollSchedule()
        self._http = httpx.AsyncClient(
            base_url=base_url,
            headers=protocol.default_headers(api_key),
            timeout=timeout,
            transport=transport,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    @property
    def base_url(self) -> httpx.URL:
        return self._http.base_url

    async def submit(
        self,
        story_id: str,
        input: str,
        flow: str = "default",
        *,
        idempotency_key: str | None = None,
        wait: float | None = None,
    ) -> SubmitResult:
        request = protocol.submit_request(story_id, input, flow, idempotency_key, wait, self._http.timeout)
        response = await self._request(
            "POST",
            "/run",
            json=request.body,
            headers=request.headers,
            params=request.params,
            timeout=request.timeout or self._http.timeout,
        )
        return protocol.parse_submit(response)

    async def get(self, job_id: str) -> RunRecord:
        return protocol.parse_record(await self._request("GET", f"/run/{job_id}"))

    async def cancel(self, job_id: str) -> RunRecord:
        return protocol.parse_record(await self._request("DELETE", f"/run/{job_id}"))

    async def retry(self, job_id: str, from_node: str | None = None) -> RunRecord:
        """Queue a failed or cancelled run again, at the step that stopped it or at `from_node`."""
        return protocol.parse_record(
            await self._request("POST", f"/run/{job_id}/retry", json=protocol.retry_body(from_node))
        )

    async def answer(self, job_id: str, action: str, text: str | None = None) -> RunRecord:
        """Answer the human step a run awaits."""
        return protocol.parse_record(
            await self._request("POST", f"/run/{job_id}/input", json=protocol.input_body(action, text))
        )

    async def list_runs(
        self, story_id: str | None = None, status: str | None = None, limit: int | None = None
    ) -> list[RunRecord]:
        params = protocol.runs_query(story_id, status, limit)
        return protocol.parse_runs(await self._request("GET", "/runs", params=params))

    async def batch(self, runs: list[dict[str, Any]]) -> list[BatchItem]:
        return protocol.parse_batch(await self._request("POST", "/runs/batch", json={"runs": runs}))

    async def runs(
        self,
        *,
        batch_id: str | None = None,
        story_id: str | None = None,
        status: str | None = None,
        page_size: int = protocol.RUNS_PAGE_SIZE,
    ) -> list[RunRecord]:
        """Every run that matches (a batch's, a story's, ...), newest first, read page by page."""
        records: list[RunRecord] = []
        cursor: str | None = None
        while True:
            page, cursor = await self.runs_page(
                batch_id=batch_id, story_id=story_id, status=status, limit=page_size, cursor=cursor
            )
            records.extend(page)
            if cursor is None:
                return records

    async def runs_page(
        self,
        *,
        batch_id: str | None = None,
        story_id: str | None = None,
        status: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> tuple[list[RunRecord], str | None]:
        """One page of `GET /runs` and the cursor of the next page (None after the last)."""
        params = protocol.runs_query(story_id, status, limit, batch_id=batch_id, cursor=cursor)
        return protocol.parse_runs_page(await self._request("GET", "/runs", params=params))

    async def create_batch(
        self,
        runs: list[dict[str, Any]],
        webhook: str | None = None,
        idempotency_key: str | None = None,
    ) -> BatchCreated:
        """`POST /batches`: up to 10000 runs as one batch; the same `idempotency_key` again answers that batch."""
        request = protocol.batches_request(runs, webhook, idempotency_key)
        response = await self._request("POST", "/batches", json=request.body, headers=request.headers)
        return protocol.parse_batch_created(response)

    async def get_batch(self, batch_id: str) -> Batch:
        return protocol.parse_batch_info(await self._request("GET", f"/batches/{batch_id}"))

    async def list_batches(self, limit: int | None = None) -> list[Batch]:
        """The tenant's batches, newest first."""
        params = protocol.batches_query(limit)
        return protocol.parse_batches(await self._request("GET", "/batches", params=params))

    async def cancel_batch(self, batch_id: str) -> Batch:
        """Cancel the batch's unfinished runs; the batch after."""
        return protocol.parse_batch_info(await self._request("DELETE", f"/batches/{batch_id}"))

    async def retry_batch(self, batch_id: str) -> Batch:
        """Retry the batch's failed runs; the batch after."""
        return protocol.parse_batch_info(await self._request("POST", f"/batches/{batch_id}/retry"))

    async def flows(self) -> list[FlowInfo]:
        return protocol.parse_flows(await self._request("GET", "/flows"))

    async def put_doc(self, doc_id: str, content: str) -> DocWritten:
        response = await self._request("PUT", f"/docs/{doc_id}", json={"content": content})
        return protocol.parse_doc_written(response, doc_id)

    async def get_doc(self, doc_id: str) -> Document:
        return protocol.parse_document(await self._request("GET", f"/docs/{doc_id}"))

    async def list_docs(self) -> list[DocInfo]:
        return protocol.parse_docs(await self._request("GET", "/docs"))

    async def delete_doc(self, doc_id: str) -> None:
        protocol.raise_for_error(await self._request("DELETE", f"/docs/{doc_id}"))

    async def events(self, job_id: str, last_event_id: str | None = None) -> AsyncGenerator[RunEvent, None]:
        """The run's events until a terminal one (included) or until the server ends the stream."""
        try:
            async with httpx_sse.aconnect_sse(
                self._http,
                "GET",
                f"/run/{job_id}/events",
                headers=protocol.events_headers(last_event_id),
                timeout=protocol.stream_timeout(self._http.timeout, None),
            ) as source:
                if source.response.is_error:
                    await source.response.aread()
                    raise error_from_response(source.response)
                async for sse in source.aiter_sse():
                    event = protocol.event_from_sse(sse)
                    if event is None:
                        continue
                    yield event
                    if event.is_terminal:
                        return
        except httpx.TransportError as exc:
            raise error_from_transport(exc, self.base_url) from None

    async def wait(
        self,
        job_id: str,
        timeout: float | None = None,  # noqa: ASYNC109 - the same signature as StoryflowClient.wait
        *,
        on_event: protocol.EventCallback | None = None,
    ) -> RunRecord:
        """Follow the run's events until it finishes, then return its record.

        Falls back to polling with backoff when the event stream is unavailable.
        """
        try:
            async with asyncio.timeout(timeout):
                await self._follow_events(job_id, on_event)
                return await self._poll_until_finished(job_id)
        except TimeoutError:
            record = await self.get(job_id)
            if record.is_finished:
                return record
            raise WaitTimeout(record, timeout or 0.0) from None

    async def _follow_events(self, job_id: str, on_event: protocol.EventCallback | None) -> None:
        last_event_id: str | None = None
        failures = 0
        while failures < protocol.EVENT_STREAM_RETRIES:
            try:
                async with aclosing(self.events(job_id, last_event_id)) as events:
                    async for event in events:
                        last_event_id = event.id or last_event_id
                        failures = 0
                        if on_event is not None:
                            on_event(event)
                        if event.is_terminal:
                            return
            except StoryflowError as exc:
                if exc.status_code is not None:
                    return
            failures += 1

    async def _poll_until_finished(self, job_id: str) -> RunRecord:
        delay = self.poll_schedule.first_delay
        while True:
            record = await self.get(job_id)
            if record.is_finished:
                return record
            await asyncio.sleep(delay)
            delay = self.poll_schedule.next_delay(delay)

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return await self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise error_from_transport(exc, self.base_url) from None
