"""Fleet-wide LLM rate limits through Redis, counted where it matters: at the (fake) provider."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from agents.llm import LLMClient, Prompt, create_llm
from tests.support.fake_openai import FakeOpenAI, Reply, fake_openai_fixture, fake_openai_server  # noqa: F401

WINDOW_S = 1.0


def most_in_any_window(times: list[float], window: float) -> int:
    times = sorted(times)
    return max((sum(1 for t in times[i:] if t - start < window) for i, start in enumerate(times)), default=0)


@pytest.fixture
async def fleet(redis_url: str, redis: Redis, fake_openai: FakeOpenAI) -> AsyncIterator[Any]:
    """Two LLM clients as two worker processes would have them: each its own Redis and HTTP pools."""
    made: list[tuple[LLMClient, Redis]] = []

    def make(**limits: Any) -> LLMClient:
        from infra.settings import Settings

        settings = Settings(
            llm_provider="openai", llm_base_url=fake_openai.base_url, llm_model="m", llm_retries=3,
            llm_timeout=5, llm_rate_window=WINDOW_S, **limits,
        )  # fmt: skip
        client_redis = Redis.from_url(redis_url)
        client = create_llm(settings, client_redis)
        made.append((client, client_redis))
        return client

    yield make
    for client, client_redis in made:
        await client.aclose()
        await client_redis.aclose()


async def test_two_clients_together_never_pass_the_rpm(fleet: Any, fake_openai: FakeOpenAI) -> None:
    first, second = fleet(llm_rpm=10), fleet(llm_rpm=10)
    started = time.monotonic()
    calls = [client.complete(Prompt("a", "s", f"call {n}")) for n in range(15) for client in (first, second)]
    answers = await asyncio.gather(*calls)
    assert len(answers) == 30 and len(fake_openai.requests) == 30
    arrivals = [request.at for request in fake_openai.requests]
    assert most_in_any_window(arrivals, WINDOW_S) <= 10
    assert time.monotonic() - started >= 2 * WINDOW_S  # 30 calls at 10 a window: the third ten waits two windows


async def test_calls_are_served_in_the_order_they_asked(fleet: Any, fake_openai: FakeOpenAI) -> None:
    client = fleet(llm_rpm=3)
    order: list[int] = []

    async def call(n: int) -> None:
        await client.complete(Prompt("a", "s", f"call {n}"))
        order.append(n)

    for n in range(9):  # asked one after the other, answered over three windows
        await asyncio.sleep(0.01)
        asyncio.get_running_loop().create_task(call(n))
    deadline = time.monotonic() + 10
    while len(order) < 9 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    sent = [int(request.json["messages"][1]["content"].split()[1]) for request in fake_openai.requests]
    assert sent == list(range(9))


async def test_a_429_with_retry_after_pauses_every_client(fleet: Any, fake_openai: FakeOpenAI) -> None:
    first, second = fleet(llm_rpm=1000), fleet(llm_rpm=1000)
    fake_openai.plan(Reply.status(429, retry_after="1"))
    hit = asyncio.create_task(first.complete(Prompt("a", "s", "first")))
    while not fake_openai.requests:
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.1)  # the 429 is in and the pause is set
    await second.complete(Prompt("a", "s", "second"))
    await hit
    paused_at = fake_openai.requests[0].at
    others = [r.at for r in fake_openai.requests[1:]]
    assert len(others) == 2 and min(others) - paused_at >= 0.95  # neither client sent before the pause ended


async def test_tokens_per_window_are_estimated_then_corrected(fleet: Any) -> None:
    # Each call is estimated at 256 + chars/4 = 258 tokens and really uses 5 (a token a word at the fake).
    client = fleet(llm_tpm=600)
    started = time.monotonic()
    for n in range(6):  # corrected after each call: 6 x 5 tokens, nobody waits
        await client.complete(Prompt("a", "s", f"call {n}"))
    assert time.monotonic() - started < WINDOW_S
    await asyncio.sleep(WINDOW_S)
    started = time.monotonic()
    await asyncio.gather(*(client.complete(Prompt("a", "s", f"burst {n}")) for n in range(3)))
    assert time.monotonic() - started >= WINDOW_S  # 3 x 258 estimated > 600: the third waits a window
