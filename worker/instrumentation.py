"""What a worker measures about its runs, kept locally and flushed with its heartbeat."""

from __future__ import annotations

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
