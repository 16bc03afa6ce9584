"""The one retry layer around a provider, and the fleet-wide rate limits every request passes.

A transient failure (timeout, connection error, 408/409/429/5xx) is tried again up to
STORYFLOW_LLM_RETRIES times, after what the server's `Retry-After` asks or else an exponential
backoff with jitter; a 429 with `Retry-After` also pauses the model's calls across the fleet.
When the retries run out, `TransientLLMError` reaches the agent and the attempt fails.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from agents.llm import Completion, LLMClient, OnText, Prompt, TransientLLMError
from agents.llm.ratelimit import FleetRateLimiter
from infra.settings import Settings

if TYPE_CHECKING:
    from redis.asyncio import Redis

BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 8.0
CHARS_PER_TOKEN = 4
EXPECTED_ANSWER_TOKENS = 256


def retry_delay(attempt: int, retry_after: float | None) -> float:
    """Seconds to wait before retry number `attempt + 1`: the server's word, else backoff with jitter."""
    if retry_after is not None:
        return retry_after
    return min(BACKOFF_BASE_S * 2.0**attempt, BACKOFF_MAX_S) * random.uniform(0.5, 1.5)


def estimate_tokens(prompt: Prompt) -> int:
    return (len(prompt.system) + len(prompt.user)) // CHARS_PER_TOKEN + EXPECTED_ANSWER_TOKENS


class ResilientLLM:
    def __init__(self, inner: LLMClient, settings: Settings, redis: Redis | None = None) -> None:
        self.inner = inner
        self.provider, self.model = inner.provider, inner.model
        self.retries = settings.llm_retries
        self.limiter = None
        if redis is not None and (settings.llm_rpm or settings.llm_tpm):
            self.limiter = FleetRateLimiter(
                redis, inner.model, rpm=settings.llm_rpm, tpm=settings.llm_tpm, window_s=settings.llm_rate_window
            )
        self.requests = 0  # HTTP requests sent, retries included
        self.on_wait: Callable[[float], None] | None = None  # told each wait for the rate limit (metrics)

    async def complete(self, prompt: Prompt, on_text: OnText | None = None) -> Completion:
        sent_text = False

        async def forward(text: str, restart: bool) -> None:
            nonlocal sent_text
            if on_text is not None:
                await on_text(text, restart)
            sent_text = True

        for attempt in range(self.retries + 1):
            restarting = sent_text

            async def first_marks_restart(text: str, restart: bool) -> None:
                nonlocal restarting
                await forward(text, restart or restarting)
                restarting = False

            try:
                return await self._send(prompt, first_marks_restart)
            except TransientLLMError as exc:
                if attempt == self.retries:
                    raise TransientLLMError(f"{exc} (after {attempt + 1} attempts)") from exc
                if exc.rate_limited and exc.retry_after and self.limiter is not None:
                    await self.limiter.pause(exc.retry_after)
                await asyncio.sleep(retry_delay(attempt, exc.retry_after))
        raise AssertionError("unreachable")

    async def _send(self, prompt: Prompt, on_text: OnText) -> Completion:
        if self.limiter is None:
            self.requests += 1
            return await self.inner.complete(prompt, on_text)
        reservation = await self.limiter.reserve(estimate_tokens(prompt))
        if reservation.wait_s > 0:
            started = time.monotonic()
            await asyncio.sleep(reservation.wait_s)
            if self.on_wait is not None:
                self.on_wait(time.monotonic() - started)
        self.requests += 1
        try:
            completion = await self.inner.complete(prompt, on_text)
        except TransientLLMError:
            raise  # the estimate stands for what the failed request may have cost
        await self.limiter.settle(reservation, completion.prompt_tokens + completion.completion_tokens)
        return completion

    async def aclose(self) -> None:
        await self.inner.aclose()
