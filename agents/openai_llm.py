"""The `openai` provider: any OpenAI-compatible chat-completions server, over one pooled client."""

from __future__ import annotations

import asyncio
import random
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from agents.llm import TransientLLMError
from infra.settings import Settings

RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER_S = 30.0


class LLMRequestError(Exception):
    """The server refused the request for good (4xx other than 408/409/429)."""


def retry_after_seconds(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return min(float(value), MAX_RETRY_AFTER_S)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    from datetime import UTC, datetime

    return max(0.0, min((when - datetime.now(UTC)).total_seconds(), MAX_RETRY_AFTER_S))


class OpenAILLM:
    provider = "openai"

    def __init__(self, settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        assert settings.llm_base_url and settings.llm_model
        headers = {"Authorization": f"Bearer {settings.llm_api_key.get_secret_value()}"} if settings.llm_api_key else {}
        self.model = settings.llm_model
        self.retries = settings.llm_retries
        self.usage: dict[str, int] = {"prompt_tokens": 0, "completion_tokens": 0, "calls": 0, "errors": 0}
        self._client = httpx.AsyncClient(
            base_url=settings.llm_base_url.rstrip("/") + "/",
            headers=headers,
            timeout=httpx.Timeout(settings.llm_timeout, connect=min(10.0, settings.llm_timeout)),
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
            transport=transport,
        )

    async def complete(self, *, agent: str, system: str, user: str) -> str:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        body = {"model": self.model, "messages": messages}
        for attempt in range(self.retries + 1):
            try:
                return await self._call(body)
            except _RetryableAnswer as retry:
                if attempt == self.retries:
                    raise TransientLLMError(str(retry)) from None
                backoff = 0.5 * 2**attempt * random.uniform(0.5, 1.5)
                await asyncio.sleep(retry.wait if retry.wait is not None else backoff)
        raise AssertionError("unreachable")

    async def _call(self, body: dict[str, Any]) -> str:
        self.usage["calls"] += 1
        try:
            response = await self._client.post("chat/completions", json=body)
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            self.usage["errors"] += 1
            raise _RetryableAnswer(f"LLM call failed: {type(exc).__name__}", None) from exc
        if response.status_code in RETRYABLE_STATUS:
            self.usage["errors"] += 1
            raise _RetryableAnswer(f"LLM server answered {response.status_code}", retry_after_seconds(response))
        if response.status_code >= 400:
            self.usage["errors"] += 1
            raise LLMRequestError(f"LLM server answered {response.status_code}: {response.text[:200]}")
        payload = response.json()
        usage = payload.get("usage") or {}
        self.usage["prompt_tokens"] += int(usage.get("prompt_tokens", 0))
        self.usage["completion_tokens"] += int(usage.get("completion_tokens", 0))
        content: str = payload["choices"][0]["message"]["content"]
        return content

    async def aclose(self) -> None:
        await self._client.aclose()


class _RetryableAnswer(Exception):
    def __init__(self, message: str, wait: float | None) -> None:
        super().__init__(message)
        self.wait = wait
