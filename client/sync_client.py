"""Blocking client for the storyflow HTTP API."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Generator
from contextlib import closing
from types import TracebackType
from typing import Any, Self

import httpx
import httpx_sse

from client import _protocol as protocol
from client.errors import StoryflowError, WaitTimeout, error_from_response, error_from_transport
from client.models import (
    BatchItem,
    DocInfo,
    Document,
    DocWritten,
    FlowInfo,
    RunEvent,
    RunRecord,
    SubmitResult,
)


class StoryflowClient:
    def __init__(
        self,
        base_url: str = protocol.DEFAULT_URL,
        api_key: str | None = None,
        *,
        timeout: float = protocol.DEFAULT_TIMEOUT,
        poll_schedule: protocol.PollSchedule | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.poll_schedule = poll_schedule or protocol.PollSchedule()
        self._http = httpx.Client(
            base_url=base_url,
            headers=protocol.default_headers(api_key),
            timeout=timeout,
            transport=transport,
        )

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
        self._http.close()

    @property
    def base_url(self) -> httpx.URL:
        return self._http.base_url

    def submit(
        self,
        story_id: str,
        input: str,
        flow: str = "default",
        *,
        idempotency_key: str | None = None,
        wait: float | None = None,
    ) -> SubmitResult:
        request = protocol.submit_request(story_id, input, flow, idempotency_key, wait, self._http.timeout)
        response = self._request(
            "POST",
            "/run",
            json=request.body,
            headers=request.headers,
            params=request.params,
            timeout=request.timeout or self._http.timeout,
        )
        return protocol.parse_submit(response)

    def get(self, job_id: str) -> RunRecord:
        return protocol.parse_record(self._request("GET", f"/run/{job_id}"))

    def cancel(self, job_id: str) -> RunRecord:
        return protocol.parse_record(self._request("DELETE", f"/run/{job_id}"))

    def retry(self, job_id: str, from_node: str | None = None) -> RunRecord:
        """Queue a failed or cancelled run again, at the step that stopped it or at `from_node`."""
        return protocol.parse_record(self._request("POST", f"/run/{job_id}/retry", json=protocol.retry_body(from_node)))

    def answer(self, job_id: str, action: str, text: str | None = None) -> RunRecord:
        """Answer the human step a run awaits."""
        return protocol.parse_record(
            self._request("POST", f"/run/{job_id}/input", json=protocol.input_body(action, text))
        )

    def list_runs(
        self, story_id: str | None = None, status: str | None = None, limit: int | None = None
    ) -> list[RunRecord]:
        params = protocol.runs_query(story_id, status, limit)
        return protocol.parse_runs(self._request("GET", "/runs", params=params))

    def batch(self, runs: list[dict[str, Any]]) -> list[BatchItem]:
        return protocol.parse_batch(self._request("POST", "/runs/batch", json={"runs": runs}))

    def flows(self) -> list[FlowInfo]:
        return protocol.parse_flows(self._request("GET", "/flows"))

    def put_doc(self, doc_id: str, content: str) -> DocWritten:
        response = self._request("PUT", f"/docs/{doc_id}", json={"content": content})
        return protocol.parse_doc_written(response, doc_id)

    def get_doc(self, doc_id: str) -> Document:
        return protocol.parse_document(self._request("GET", f"/docs/{doc_id}"))

    def list_docs(self) -> list[DocInfo]:
        return protocol.parse_docs(self._request("GET", "/docs"))

    def delete_doc(self, doc_id: str) -> None:
        protocol.raise_for_error(self._request("DELETE", f"/docs/{doc_id}"))

    def events(self, job_id: str, last_event_id: str | None = None) -> Generator[RunEvent, None, None]:
        """The run's events until a terminal one (included) or until the server ends the stream."""
        return self._events(job_id, last_event_id, deadline=None)

    def wait(
        self,
        job_id: str,
        timeout: float | None = None,
        *,
        on_event: protocol.EventCallback | None = None,
    ) -> RunRecord:
        """Follow the run's events until it finishes, then return its record.

        Falls back to polling with backoff when the event stream is unavailable. The stream is read
        in a helper thread and handed over here, so `timeout` holds even while events keep coming
        (a blocking read cannot be told the time; the async face has asyncio.timeout for this).
        """
        deadline = protocol.Deadline(timeout)
        events: queue.Queue[RunEvent | None] = queue.Queue()

        def pump() -> None:
            try:
                self._follow_events(job_id, deadline, events.put)
            finally:
                events.put(None)

        threading.Thread(target=pump, name=f"storyflow-wait-{job_id}", daemon=True).start()
        while True:
            try:
                event = events.get(timeout=deadline.remaining)
            except queue.Empty:
                break
            if event is None:
                break
            if on_event is not None:
                on_event(event)
        return self._poll_until_finished(job_id, deadline)

    def _follow_events(self, job_id: str, deadline: protocol.Deadline, on_event: protocol.EventCallback | None) -> None:
        last_event_id: str | None = None
        failures = 0
        while failures < protocol.EVENT_STREAM_RETRIES:
            try:
                with closing(self._events(job_id, last_event_id, deadline)) as events:
                    for event in events:
                        last_event_id = event.id or last_event_id
                        failures = 0
                        if on_event is not None:
                            on_event(event)
                        if event.is_terminal:
                            return
            except StoryflowError as exc:
                if exc.status_code is not None or deadline.expired:
                    return
            if deadline.expired:
                return
            failures += 1

    def _events(
        self, job_id: str, last_event_id: str | None, deadline: protocol.Deadline | None
    ) -> Generator[RunEvent, None, None]:
        try:
            with httpx_sse.connect_sse(
                self._http,
                "GET",
                f"/run/{job_id}/events",
                headers=protocol.events_headers(last_event_id),
                timeout=protocol.stream_timeout(self._http.timeout, deadline),
            ) as source:
                if source.response.is_error:
                    source.response.read()
                    raise error_from_response(source.response)
                for sse in source.iter_sse():
                    if deadline is not None and deadline.expired:
                        return
                    event = protocol.event_from_sse(sse)
                    if event is None:
                        continue
                    yield event
                    if event.is_terminal:
                        return
        except httpx.TransportError as exc:
            raise error_from_transport(exc, self.base_url) from None

    def _poll_until_finished(self, job_id: str, deadline: protocol.Deadline) -> RunRecord:
        delay = self.poll_schedule.first_delay
        while True:
            record = self.get(job_id)
            if record.is_finished:
                return record
            if deadline.expired:
                raise WaitTimeout(record, deadline.timeout or 0.0)
            time.sleep(deadline.clamp(delay))
            delay = self.poll_schedule.next_delay(delay)

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise error_from_transport(exc, self.base_url) from None
