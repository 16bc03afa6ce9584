"""The `openai` provider: any OpenAI-compatible chat-completions server, through the official SDK.

One `AsyncOpenAI` client per worker process, made at start-up and closed at shutdown, so every
run shares its connection pool. Each call streams (`stream_options.include_usage` brings the token
counts in the last chunk) and has a deadline of STORYFLOW_LLM_TIMEOUT as a whole.

The SDK's own retries are off (`max_retries=0`): storyflow retries in one place
(agents/llm/resilient.py), where every request passes the fleet-wide rate limiter and a 429's
`Retry-After` pauses the whole fleet. Errors are mapped here: timeouts, connection errors and
408/409/429/5xx are transient; other 4xx and answers that are not a chat completion are not.
"""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import openai
from openai import AsyncOpenAI

from agents.llm import Completion, LLMRequestError, OnText, Prompt, TransientLLMError
from infra.settings import Settings

RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER_S = 30.0
ERROR_BODY_CHARS = 200


class LLMResponseError(LLMRequestError):
    """The server answered with success, but not with a chat completion."""


def retry_after_seconds(headers: Any) -> float | None:
    """The wait a `Retry-After` header asks for (delta-seconds or HTTP date), capped; None if absent or invalid."""
    value = str(headers.get("retry-after", "") if headers is not None else "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return min(seconds, MAX_RETRY_AFTER_S) if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" or an obsolete zone: HTTP dates are always UTC
        when = when.replace(tzinfo=UTC)
    return max(0.0, min((when - datetime.now(UTC)).total_seconds(), MAX_RETRY_AFTER_S))


class OpenAILLM:
    provider = "openai"

    def __init__(self, settings: Settings) -> None:
        if not (settings.llm_base_url and settings.llm_model):
            raise ValueError("the openai provider needs STORYFLOW_LLM_BASE_URL and STORYFLOW_LLM_MODEL")
        self.model = settings.llm_model
        self.timeout = settings.llm_timeout
        api_key = settings.llm_api_key.get_secret_value() if settings.llm_api_key else "unused"
        self._client = AsyncOpenAI(
            base_url=settings.llm_base_url, api_key=api_key, timeout=settings.llm_timeout, max_retries=0
        )

    async def complete(self, prompt: Prompt, on_text: OnText | None = None) -> Completion:
        try:
            async with asyncio.timeout(self.timeout):  # the SDK's timeout bounds each phase; this, the call
                return await self._stream(prompt, on_text)
        except TimeoutError as exc:
            raise TransientLLMError(f"no answer within STORYFLOW_LLM_TIMEOUT={self.timeout}s") from exc
        except openai.APIStatusError as exc:
            raise _status_error(exc) from exc
        except openai.APIConnectionError as exc:  # timeouts of a phase included
            raise TransientLLMError(f"LLM call failed: {exc!r}") from exc

    async def _stream(self, prompt: Prompt, on_text: OnText | None) -> Completion:
        messages: Any = [{"role": "system", "content": prompt.system}, {"role": "user", "content": prompt.user}]
        stream = await self._client.chat.completions.create(
            model=self.model, messages=messages, stream=True, stream_options={"include_usage": True}
        )
        parts: list[str] = []
        usage = None
        async with stream:
            async for chunk in stream:
                usage = chunk.usage or usage
                if not chunk.choices:
                    continue
                text = chunk.choices[0].delta.content if chunk.choices[0].delta else None
                if text:
                    parts.append(text)
                    if on_text is not None:
                        await on_text(text, False)
        if usage is None and not parts:
            raise LLMResponseError("LLM server answered without a chat completion")
        prompt_tokens = usage.prompt_tokens if usage else 0
        completion_tokens = usage.completion_tokens if usage else 0
        return Completion("".join(parts), prompt_tokens, completion_tokens, self.model)

    async def aclose(self) -> None:
        await self._client.close()


def _status_error(exc: openai.APIStatusError) -> Exception:
    status = exc.status_code
    if status in RETRYABLE_STATUS or status >= 500:
        return TransientLLMError(
            f"LLM server answered {status}",
            retry_after=retry_after_seconds(exc.response.headers),
            rate_limited=status == 429,
        )
    return LLMRequestError(f"LLM server answered {status}: {str(exc.body or exc.message)[:ERROR_BODY_CHARS]}")
