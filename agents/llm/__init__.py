"""The one LLM client interface agents call, and the factory of its providers (`echo`, `openai`)."""

from __future__ import annotations

from typing import Protocol

from infra.settings import Settings


class TransientLLMError(Exception):
    """A failure that outlived the provider's retries: timeouts, connection errors, 429 and 5xx answers.

    Providers retry these themselves (the one retry layer, where `Retry-After` can be honoured); when
    one reaches an agent, the run's attempt fails.
    """


class LLMClient(Protocol):
    provider: str

    async def complete(self, *, agent: str, system: str, user: str) -> str: ...

    async def aclose(self) -> None: ...


def create_llm(settings: Settings) -> LLMClient:
    """The provider STORYFLOW_LLM_PROVIDER names; one per process, closed with `aclose` at shutdown."""
    from agents.llm.echo import EchoLLM
    from agents.llm.openai_compatible import OpenAILLM

    client: LLMClient = OpenAILLM(settings) if settings.llm_provider == "openai" else EchoLLM(settings.echo_delay)
    return client
