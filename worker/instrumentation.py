"""What a worker measures about its runs, kept locally and flushed with its heartbeat."""

from __future__ import annotations

import asyncio
import contextlib
import time

from agents.llm import Completion, LLMClient, OnText, Prompt
from agents.llm.resilient import ResilientLLM
from infra.metrics import LocalMetrics


class MeteredLLM:
    """Counts LLM calls and errors by provider around any LLM client."""

    def __init__(self, inner: LLMClient, metrics: LocalMetrics) -> None:
        self.inner = inner
        self.metrics = metrics
        self.provider, self.model = inner.provider, inner.model
        if isinstance(inner, ResilientLLM):
            inner.on_wait = self._waited

    async def complete(self, prompt: Prompt, on_text: OnText | None = None) -> Completion:
        self.metrics.inc("storyflow_llm_calls_total", provider=self.provider)
        try:
            return await self.inner.complete(prompt, on_text)
        except Exception:
            self.metrics.inc("storyflow_llm_errors_total", provider=self.provider)
            raise

    def _waited(self, seconds: float) -> None:
        self.metrics.inc("storyflow_llm_wait_seconds_total", seconds, model=self.model)

    async def aclose(self) -> None:
        await self.inner.aclose()


class LoopLag:
    """How late the event loop wakes a task that sleeps INTERVAL_S: a loop busy with work it does not
    yield from shows here first. `take()` gives the p99 of the samples since the last take, in ms."""

    INTERVAL_S = 0.01

    def __init__(self) -> None:
        self.samples: list[float] = []

    async def run(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                started = time.perf_counter()  # not loop.time(): uvloop's clock counts whole milliseconds
                await asyncio.sleep(self.INTERVAL_S)
                self.samples.append(time.perf_counter() - started - self.INTERVAL_S)

    def take(self) -> float:
        samples, self.samples = sorted(self.samples), []
        if not samples:
            return 0.0
        return round(1000 * samples[min(len(samples) - 1, int(len(samples) * 0.99))], 2)
