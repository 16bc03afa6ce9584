"""The `openai` LLM provider over real HTTP, against a fake OpenAI-compatible server on loopback:
the client alone (answers, usage, retries, timeouts, Retry-After), then whole runs in a worker."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from agents.llm import TransientLLMError, create_llm
from agents.llm import openai_compatible as openai_llm
from agents.llm.openai_compatible import LLMRequestError, LLMResponseError, OpenAILLM, retry_after_seconds
from infra.settings import Settings
from tests.conftest import drain, make_settings
from tests.support.fake_openai import FakeOpenAI, Reply, fake_openai_fixture, fake_openai_server  # noqa: F401

RUN = {"input": "Users want PDF export.", "story_id": "story-1"}


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Backoff without Retry-After stays exponential, but from 10 ms, so failing runs end quickly."""
    monkeypatch.setattr(openai_llm, "BACKOFF_BASE_S", 0.01)


def llm_settings(base_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "llm_provider": "openai", "llm_base_url": base_url, "llm_model": "test-model",
        "llm_api_key": "sk-test", "llm_retries": 2, "llm_timeout": 0.3,
    }  # fmt: skip
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
async def llm(fake_openai: FakeOpenAI) -> AsyncIterator[OpenAILLM]:
    client = OpenAILLM(llm_settings(fake_openai.base_url))
    yield client
    await client.aclose()


async def ask(llm: OpenAILLM, user: str = "hello world", agent: str = "analyst") -> str:
    return await llm.complete(agent=agent, system="Be brief.", user=user)


# -- the client alone ----------------------------------------------------------------------------


async def test_success_returns_the_content_and_records_usage(llm: OpenAILLM, fake_openai: FakeOpenAI) -> None:
    assert await ask(llm) == "[test-model] hello world"
    assert len(fake_openai.requests) == 1
    request = fake_openai.requests[0]
    assert request.method == "POST" and request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer sk-test"
    assert request.headers["content-type"] == "application/json"
    assert request.json == {
        "model": "test-model",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello world"}],
    }
    # The fake counts words: 2 + 2 prompt tokens, 3 completion tokens.
    expected = {"prompt_tokens": 4, "completion_tokens": 3, "calls": 1, "requests": 1, "errors": 0}
    assert llm.usage == expected
    assert llm.usage_by_agent == {"analyst": expected}

    assert await ask(llm, "one two three", agent="summarizer") == "[test-model] one two three"
    assert llm.usage_by_agent["summarizer"] == {
        "prompt_tokens": 5, "completion_tokens": 4, "calls": 1, "requests": 1, "errors": 0,
    }  # fmt: skip
    assert llm.usage == {"prompt_tokens": 9, "completion_tokens": 7, "calls": 2, "requests": 2, "errors": 0}


async def test_no_api_key_sends_no_authorization(fake_openai: FakeOpenAI) -> None:
    client = OpenAILLM(llm_settings(fake_openai.base_url, llm_api_key=None))
    try:
        await ask(client)
    finally:
        await client.aclose()
    assert "authorization" not in fake_openai.requests[0].headers


async def test_calls_share_one_pooled_connection(llm: OpenAILLM, fake_openai: FakeOpenAI) -> None:
    for n in range(3):
        await ask(llm, f"call {n}")
    peers = {request.peer for request in fake_openai.requests}
    assert len(fake_openai.requests) == 3 and len(peers) == 1, peers


async def test_concurrent_calls(llm: OpenAILLM, fake_openai: FakeOpenAI) -> None:
    answers = await asyncio.gather(*(ask(llm, f"call {n}") for n in range(20)))
    assert answers == [f"[test-model] call {n}" for n in range(20)]
    assert llm.usage["requests"] == 20 and llm.usage["completion_tokens"] == 60


async def test_429_then_success_honours_retry_after(
    llm: OpenAILLM, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(openai_llm, "BACKOFF_BASE_S", 10.0)  # ignoring Retry-After: 0 would wait seconds
    fake_openai.plan(Reply.status(429, retry_after="0"))
    started = time.monotonic()
    assert await ask(llm) == "[test-model] hello world"
    assert time.monotonic() - started < 1.0
    assert len(fake_openai.requests) == 2
    assert llm.usage_by_agent["analyst"] == {
        "prompt_tokens": 4, "completion_tokens": 3, "calls": 1, "requests": 2, "errors": 1,
    }  # fmt: skip


async def test_retry_after_seconds_are_waited(llm: OpenAILLM, fake_openai: FakeOpenAI) -> None:
    fake_openai.plan(Reply.status(503, retry_after="1"))
    assert await ask(llm) == "[test-model] hello world"
    first, second = fake_openai.requests
    assert second.at - first.at >= 0.9


async def test_retry_after_as_an_http_date(
    llm: OpenAILLM, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    waits: list[float | None] = []

    def spy(attempt: int, retry_after: float | None) -> float:
        waits.append(retry_after)
        return 0.0

    monkeypatch.setattr(openai_llm, "retry_delay", spy)
    now = datetime.now(UTC)
    fake_openai.plan(
        Reply.status(429, retry_after=format_datetime(now + timedelta(seconds=20), usegmt=True)),
        Reply.status(503, retry_after=format_datetime(now + timedelta(hours=1), usegmt=True)),
    )
    assert await llm.complete(agent="a", system="s", user="u") == "[test-model] u"
    assert len(fake_openai.requests) == 3 and len(waits) == 2
    assert waits[0] is not None and 17.0 < waits[0] <= 20.0
    assert waits[1] == openai_llm.MAX_RETRY_AFTER_S


def response(retry_after: str) -> httpx.Response:
    return httpx.Response(429, headers={"Retry-After": retry_after})


def test_retry_after_parsing() -> None:
    assert retry_after_seconds(httpx.Response(429)) is None
    assert retry_after_seconds(response("2")) == 2.0
    assert retry_after_seconds(response("3600")) == openai_llm.MAX_RETRY_AFTER_S
    for bad in ("-1", "nan", "inf", "soon", "Mon, 99 Foo 2024 00:00:00 GMT"):
        assert retry_after_seconds(response(bad)) is None, bad
    past = format_datetime(datetime.now(UTC) - timedelta(minutes=5), usegmt=True)
    assert retry_after_seconds(response(past)) == 0.0
    # "-0000" gives a naive datetime: still read as UTC.
    future = (datetime.now(UTC) + timedelta(seconds=10)).strftime("%a, %d %b %Y %H:%M:%S -0000")
    wait = retry_after_seconds(response(future))
    assert wait is not None and 8.0 < wait <= 10.0


async def test_a_hang_past_the_timeout_is_retried_then_transient(llm: OpenAILLM, fake_openai: FakeOpenAI) -> None:
    fake_openai.always(Reply.hang(5))
    started = time.monotonic()
    with pytest.raises(TransientLLMError, match="STORYFLOW_LLM_TIMEOUT"):
        await ask(llm)
    elapsed = time.monotonic() - started
    assert len(fake_openai.requests) == 3  # llm_retries + 1
    assert 0.85 < elapsed < 2.5, elapsed
    assert llm.usage == {"prompt_tokens": 0, "completion_tokens": 0, "calls": 1, "requests": 3, "errors": 3}


async def test_a_hang_then_success(llm: OpenAILLM, fake_openai: FakeOpenAI) -> None:
    fake_openai.plan(Reply.hang(5))
    assert await ask(llm) == "[test-model] hello world"
    assert len(fake_openai.requests) == 2


async def test_a_5xx_storm_ends_in_transient_error(llm: OpenAILLM, fake_openai: FakeOpenAI) -> None:
    fake_openai.always(Reply.status(500))
    with pytest.raises(TransientLLMError, match="500"):
        await ask(llm)
    assert len(fake_openai.requests) == 3


@pytest.mark.parametrize("code", [400, 401, 404, 422])
async def test_other_4xx_fail_at_once(llm: OpenAILLM, fake_openai: FakeOpenAI, code: int) -> None:
    fake_openai.plan(Reply.status(code, retry_after="0"))
    with pytest.raises(LLMRequestError, match=str(code)) as raised:
        await ask(llm)
    assert not isinstance(raised.value, TransientLLMError)
    assert len(fake_openai.requests) == 1


@pytest.mark.parametrize(
    "reply",
    [Reply(raw=b"<html>proxy</html>"), Reply(body={"choices": []}), Reply(body={"choices": [{"message": {}}]})],
)
async def test_a_success_without_a_completion_fails_at_once(
    llm: OpenAILLM, fake_openai: FakeOpenAI, reply: Reply
) -> None:
    fake_openai.plan(reply)
    with pytest.raises(LLMResponseError):
        await ask(llm)
    assert len(fake_openai.requests) == 1


async def test_connection_refused_is_transient() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = OpenAILLM(llm_settings(f"http://127.0.0.1:{port}/v1"))
    try:
        with pytest.raises(TransientLLMError, match="ConnectError"):
            await ask(client)
        assert client.usage["requests"] == 3 and client.usage["errors"] == 3
    finally:
        await client.aclose()


def test_create_llm_picks_the_provider(fake_openai: FakeOpenAI) -> None:
    assert create_llm(Settings()).provider == "echo"  # the default
    assert isinstance(create_llm(llm_settings(fake_openai.base_url)), OpenAILLM)


# -- whole runs in a worker ----------------------------------------------------------------------


@pytest.fixture
def settings(redis_url: str, redis: Redis, fake_openai: FakeOpenAI) -> Settings:
    return make_settings(
        redis_url, llm_provider="openai", llm_base_url=fake_openai.base_url, llm_model="test-model",
        llm_api_key="sk-test", llm_retries=2, llm_timeout=0.5,
    )  # fmt: skip


@pytest.fixture
def clients(monkeypatch: pytest.MonkeyPatch) -> list[OpenAILLM]:
    """Every OpenAILLM the worker makes, to check it made one and closed it."""
    made: list[OpenAILLM] = []
    original = OpenAILLM.__init__

    def init(self: OpenAILLM, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(OpenAILLM, "__init__", init)
    return made


async def submit(client: httpx.AsyncClient) -> str:
    response = await client.post("/run", json=RUN)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["job_id"]
    return job_id


async def record(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    response = await client.get(f"/run/{job_id}")
    assert response.status_code == 200
    run: dict[str, Any] = response.json()
    return run


async def test_a_run_completes_with_answers_from_the_server(
    client: httpx.AsyncClient, settings: Settings, fake_openai: FakeOpenAI, clients: list[OpenAILLM]
) -> None:
    job_ids = [await submit(client), await submit(client)]
    await drain(settings)
    for job_id in job_ids:
        run = await record(client, job_id)
        assert run["status"] == "complete" and run["error"] is None, run
    assert run["outputs"] == {
        "analyst": "[test-model] Users want PDF export.",
        "summarizer": "[test-model] [test-model] Users want PDF export.",
    }
    assert run["result"] == run["outputs"]["summarizer"]
    assert (await client.get("/memory/story-1")).status_code == 200
    assert len(fake_openai.requests) == 4
    for request in fake_openai.requests:
        assert request.headers["authorization"] == "Bearer sk-test"
        assert request.json["model"] == "test-model"
    assert fake_openai.requests[0].json["messages"][0]["content"].startswith("You are a business analyst.")
    assert fake_openai.requests[1].json["messages"][0]["content"].startswith("You are an editor.")
    # One pooled client for the worker process, made at start-up, closed at shutdown, usage recorded.
    assert len(clients) == 1 and clients[0]._client.is_closed
    assert clients[0].usage_by_agent["analyst"]["calls"] == 2
    assert clients[0].usage_by_agent["summarizer"]["completion_tokens"] == 2 * 6


async def test_a_429_and_a_timeout_are_retried_within_the_run(
    client: httpx.AsyncClient, settings: Settings, fake_openai: FakeOpenAI
) -> None:
    fake_openai.plan(Reply.status(429, retry_after="0"), Reply.ok(), Reply.hang(5))
    job_id = await submit(client)
    await drain(settings)
    run = await record(client, job_id)
    assert run["status"] == "complete" and run["attempts"] == 1, run
    assert run["result"] == "[test-model] [test-model] Users want PDF export."
    assert len(fake_openai.requests) == 4


async def test_a_500_storm_fails_the_run_and_writes_no_memory(
    client: httpx.AsyncClient, settings: Settings, fake_openai: FakeOpenAI
) -> None:
    fake_openai.always(Reply.status(500))
    job_id = await submit(client)
    await drain(settings)
    run = await record(client, job_id)
    assert run["status"] == "failed", run
    assert run["error"]["type"] == "TransientLLMError" and "500" in run["error"]["message"]
    assert run["result"] is None and run["outputs"] == {}
    assert (await client.get("/memory/story-1")).status_code == 404
    # Every attempt was the analyst's: the summarizer never ran.
    assert len(fake_openai.requests) >= settings.llm_retries + 1
    assert {r.json["messages"][1]["content"] for r in fake_openai.requests} == {RUN["input"]}
