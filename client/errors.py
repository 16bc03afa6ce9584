"""The client's exceptions, built from error answers and transport failures."""

from __future__ import annotations

from typing import Any

import httpx
import httpx_sse

from client.detail import describe_detail
from client.models import RunRecord


class StoryflowError(Exception):
    """An error answer of the server (`status_code` set) or a failure to talk to it (`status_code` None)."""

    def __init__(self, status_code: int | None, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(status_code, message)
        self.status_code = status_code
        self.message = message
        self.retry_after = retry_after

    def __str__(self) -> str:
        if self.status_code is None:
            return self.message
        return f"HTTP {self.status_code}: {self.message}"


class WaitTimeout(StoryflowError):
    """`wait` ran out of time; `record` is the run as it last was."""

    def __init__(self, record: RunRecord, timeout: float) -> None:
        super().__init__(None, f"run {record.job_id} is still {record.status} after {timeout:g}s")
        self.record = record


def error_from_response(response: httpx.Response) -> StoryflowError:
    return StoryflowError(
        response.status_code,
        _message_from_body(response),
        retry_after=_retry_after(response),
    )


def error_from_transport(exc: httpx.TransportError, base_url: httpx.URL) -> StoryflowError:
    reason = str(exc) or type(exc).__name__
    if isinstance(exc, httpx_sse.SSEError):
        return StoryflowError(None, f"unexpected event stream from {base_url}: {reason}")
    if isinstance(exc, httpx.TimeoutException):
        return StoryflowError(None, f"timed out talking to {base_url} ({type(exc).__name__})")
    return StoryflowError(None, f"cannot reach {base_url}: {reason}")


def unexpected_body(response: httpx.Response, problem: str) -> StoryflowError:
    request = response.request
    return StoryflowError(
        response.status_code,
        f"unexpected answer to {request.method} {request.url.path}: {' '.join(problem.split())}",
    )


def _message_from_body(response: httpx.Response) -> str:
    body = _json_or_none(response)
    if isinstance(body, dict) and "detail" in body:
        return describe_detail(body["detail"])
    if body is not None:
        return describe_detail(body)
    text = " ".join(response.text.split())
    return text[:300] if text else response.reason_phrase or "error"


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
