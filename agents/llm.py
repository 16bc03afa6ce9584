"""The one LLM client interface agents call, and its providers."""

from __future__ import annotations

import asyncio
from typing import Protocol

from infra.settings import Settings


class TransientLLMError(Exception):
    """A failure worth retrying: timeouts, connection errors, 429 and 5xx answers."""


class LLMClient(Protocol):
    provider: str

    async def complete(self, *, agent: str, system: str, user: str) -> str: ...

    async def aclose(self) -> None: ...


class EchoLLM:
    """Offline and deterministic: answers with the agent's name and its input."""

    provider = "echo"

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay

    async def complete(self, *, agent: str, system: str, user: str) -> str:
        if self.delay:
            await asyncio.sleep(self.delay)
        return f"[{agent}] {user}"

    async def aclose(self) -> None:
        return None


def create_llm(settings: Settings) -> LLMClient:
    if settings.llm_provider == "openai":
        from agents.openai_llm import OpenAILLM

        client: LLMClient = OpenAILLM(settings)
        return client
    return EchoLLM(settings.echo_delay)
