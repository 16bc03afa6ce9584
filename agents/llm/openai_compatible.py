"""The `openai` provider: any OpenAI-compatible chat-completions server, over one pooled client.

One `OpenAILLM` is made per worker process at start-up (`agents.llm.create_llm`) and closed at
shutdown; every run of the process shares its `httpx.AsyncClient` and so its connection pool.

Each HTTP request has a deadline of STORYFLOW_LLM_TIMEOUT seconds as a whole (connect, send, wait,
read). Timeouts, connection errors and 408/409/429/5xx answers are retried up to
STORYFLOW_LLM_RETRIES times, waiting what the server's `Retry-After` says (seconds or an HTTP
date, at most MAX_RETRY_AFTER_S) or else an exponential backoff with jitter; when they run out
`TransientLLMError` is raised. Any other 4xx, or a 2xx that is not a chat completion, raises
`LLMRequestError` at once.
"""

from __future__ import annotations

import asyncio
import math
import random
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from agents.llm import TransientLLMError
from infra.settings import Settings

RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER_S = 30.0
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 8.0
ERROR_BODY_CHARS = 200
USAGE_KEYS = ("prompt_tokens", "completion_tokens", "calls", "requests", "errors")


class LLMRequestError(Exception):
    """The server refused the request for good (4xx other than 408/409/429)."""


class LLMResponseError(LLMRequestError):
    """The server answered with success, but not with a chat completion."""


def retry_after_seconds(response: httpx.Response) -> float | None:
    """The wait a `Retry-After` header asks for (delta-seconds or HTTP date), capped; None if absent or invalid."""
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds) or seconds < 0:
            return None
        return min(seconds, MAX_RETRY_AFTER_S)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" or an obsolete zone: HTTP dates are always UTC
        when = when.replace(tzinfo=UTC)
    return max(0.0, min((when - datetime.now(UTC)).total_seconds(), MAX_RETRY_AFTER_S))


def retry_delay(attempt: int, retry_after: float | None) -> float:
    """Seconds to wait before retry number `attempt + 1`: the server's word, else backoff with jitter."""
    if retry_after is not None:
        return retry_after
    return min(BACKOFF_BASE_S * 2.0**attempt, BACKOFF_MAX_S) * random.uniform(0.5, 1.5)


def _new_usage() -> dict[str, int]:
    return dict.fromkeys(USAGE_KEYS, 0)


class OpenAILLM:
    """Chat completions over one pooled `httpx.AsyncClient`.

    `usage` holds process totals and `usage_by_agent[agent]` the same per agent name:
    `prompt_tokens` and `completion_tokens` as the server reported them, `calls` (calls of
    `complete`, however many HTTP requests each took), `requests` (HTTP requests sent, retries
    included) and `errors` (requests that failed: timeouts, connection errors, error answers).
    """

    provider = "openai"

    def __init__(self, settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        if not (settings.llm_base_url and settings.llm_model):
            raise ValueError("the openai provider needs STORYFLOW_LLM_BASE_URL and STORYFLOW_LLM_MODEL")
        headers = {"Accept": "application/json", "User-Agent": "storyflow"}
        api_key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else ""
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.model = settings.llm_model
        self.retries = settings.llm_retries
        self.timeout = settings.llm_timeout
        self.usage: dict[str, int] = _new_usage()
        self.usage_by_agent: dict[str, dict[str, int]] = {}
        pool = max(settings.worker_concurrency, 10)
        self._client = httpx.AsyncClient(
            base_url=settings.llm_base_url.rstrip("/") + "/",
            headers=headers,
            timeout=httpx.Timeout(settings.llm_timeout),
            limits=httpx.Limits(max_connections=2 * pool, max_keepalive_connections=pool),
            transport=transport,
        )

    async def complete(self, *, agent: str, system: str, user: str) -> str:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        body = {"model": self.model, "messages": messages}
        counters = (self.usage, self.usage_by_agent.setdefault(agent, _new_usage()))
        for counter in counters:
            counter["calls"] += 1
        for attempt in range(self.retries + 1):
            try:
                return await self._call(body, counters)
            except _RetryableAnswer as retry:
                if attempt == self.retries:
                    raise TransientLLMError(f"{retry} (after {attempt + 1} attempts)") from retry.__cause__
                await asyncio.sleep(retry_delay(attempt, retry.wait))
        raise AssertionError("unreachable")

    async def _call(self, body: dict[str, Any], counters: tuple[dict[str, int], ...]) -> str:
        for counter in counters:
            counter["requests"] += 1
        try:
            # httpx's timeout bounds each phase; this bounds the request as a whole.
            async with asyncio.timeout(self.timeout):
                response = await self._client.post("chat/completions", json=body)
        except (TimeoutError, httpx.TransportError) as exc:
            _count_error(counters)
            reason = f"no answer within STORYFLOW_LLM_TIMEOUT={self.timeout}s" if _is_timeout(exc) else repr(exc)
            raise _RetryableAnswer(f"LLM call failed: {reason}", None) from exc
        if response.status_code in RETRYABLE_STATUS:
            _count_error(counters)
            raise _RetryableAnswer(f"LLM server answered {response.status_code}", retry_after_seconds(response))
        if response.status_code >= 400:
            _count_error(counters)
            raise LLMRequestError(f"LLM server answered {response.status_code}: {response.text[:ERROR_BODY_CHARS]}")
        try:
            payload = response.json()
            content = payload["choices"][0]["message"]["content"]
        except (ValueError, LookupError, TypeError) as exc:
            _count_error(counters)
            raise LLMResponseError(
                f"LLM server answered {response.status_code} without a chat completion: "
                f"{response.text[:ERROR_BODY_CHARS]!r}"
            ) from exc
        if not isinstance(content, str):
            _count_error(counters)
            raise LLMResponseError(f"LLM server answered without message content: {response.text[:ERROR_BODY_CHARS]!r}")
        usage = payload.get("usage") if isinstance(payload, dict) else None
        if isinstance(usage, dict):
            for key in ("prompt_tokens", "completion_tokens"):
                tokens = usage.get(key)
                if isinstance(tokens, int) and tokens > 0:
                    for counter in counters:
                        counter[key] += tokens
        return content

    async def aclose(self) -> None:
        await self._client.aclose()


def _count_error(counters: tuple[dict[str, int], ...]) -> None:
    for counter in counters:
        counter["errors"] += 1


def _is_timeout(exc: BaseException) -> bool:
    return isinstance(exc, TimeoutError | httpx.TimeoutException)


class _RetryableAnswer(Exception):
    def __init__(self, message: str, wait: float | None) -> None:
        super().__init__(message)
        self.wait = wait
