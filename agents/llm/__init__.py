"""The one LLM interface agents call, and the factory of its providers (`echo`, `openai`).

A provider sends one request and says how it went: a `Completion` (text and token usage), a
`TransientLLMError` (worth another try, perhaps after `retry_after` seconds) or an `LLMRequestError`
(never worth one). `ResilientLLM` (agents/llm/resilient.py) wraps the provider with the one retry
layer and the fleet-wide rate limits; agents only ever see the wrapped client.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from infra.settings import Settings

if TYPE_CHECKING:
    from redis.asyncio import Redis

# Receives each piece of the answer as it arrives; `restart` says the text so far is void (a retry).
OnText = Callable[[str, bool], Awaitable[None]]


@dataclass(frozen=True)
class Prompt:
    agent: str
    system: str
    user: str
    actions: tuple[str, ...] = ()  # the actions the node offers; see the echo provider


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    model: str


class TransientLLMError(Exception):
    """A failure worth retrying: timeouts, connection errors, 408/409/429 and 5xx answers.

    Raised by a provider for one request (`retry_after`: what the server asked for, if it did), and
    by `ResilientLLM` when the retries ran out; then the run's attempt fails.
    """

    def __init__(self, message: str, *, retry_after: float | None = None, rate_limited: bool = False) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.rate_limited = rate_limited


class LLMRequestError(Exception):
    """The server refused the request for good (a 4xx other than 408/409/429), or answered nonsense."""


class LLMClient(Protocol):
    provider: str
    model: str

    async def complete(self, prompt: Prompt, on_text: OnText | None = None) -> Completion: ...

    async def aclose(self) -> None: ...


def create_llm(settings: Settings, redis: Redis | None = None) -> LLMClient:
    """The provider STORYFLOW_LLM_PROVIDER names, behind retries and (with `redis`) the fleet's rate limits.

    One per process, closed with `aclose` at shutdown.
    """
    from agents.llm.echo import EchoLLM
    from agents.llm.openai_compatible import OpenAILLM
    from agents.llm.resilient import ResilientLLM

    provider: LLMClient = OpenAILLM(settings) if settings.llm_provider == "openai" else EchoLLM(settings.echo_delay)
    return ResilientLLM(provider, settings, redis)
