"""The `openai` LLM provider over real HTTP, against a fake OpenAI-compatible server on loopback:
the client alone (streamed answers, usage, retries, timeouts, Retry-After), then whole runs in a worker."""

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

from agents.llm import Completion, LLMClient, LLMRequestError, Prompt, TransientLLMError, create_llm, resilient
from agents.llm.openai_compatible import MAX_RETRY_AFTER_S, OpenAILLM, retry_after_seconds
from agents.llm.resilient import ResilientLLM
from infra.settings import Settings
from tests.conftest import drain, make_settings
from tests.support.fake_openai import FakeOpenAI, Reply, fake_openai_fixture, fake_openai_server  # noqa: F401

RUN = {"input": "Users want PDF export.", "story_id": "story-1"}


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Backoff without Retry-After stays exponential, but from 10 ms, so failing runs end quickly."""
    monkeypatch.setattr(resilient, "BACKOFF_BASE_S", 0.01)


def llm_settings(base_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "llm_provider": "openai", "llm_base_url": base_url, "llm_model": "test-model",
        "llm_api_key": "sk-test", "llm_retries": 2, "llm_timeout": 0.3,
    }  # fmt: skip
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
async def llm(fake_openai: FakeOpenAI) -> AsyncIterator[LLMClient]:
    client = create_llm(llm_settings(fake_openai.base_url))
    yield client
    await client.aclose()


async def ask(llm: LLMClient, user: str = "hello world", agent: str = "analyst") -> Completion:
    return await llm.complete(Prompt(agent, "Be brief.", user))


# -- the client alone ----------------------------------------------------------------------------


async def test_an_answer_streams_in_and_reports_usage(llm: LLMClient, fake_openai: FakeOpenAI) -> None:
    pieces: list[tuple[str, bool]] = []

    async def on_text(text: str, restart: bool) -> None:
        pieces.append((text, restart))

    completion = await llm.complete(Prompt("analyst", "Be brief.", "hello world"), on_text)
    assert completion == Completion(
        "[test-model] hello world", prompt_tokens=4, completion_tokens=3, model="test-model"
    )
    assert pieces == [("[test-model] ", False), ("hello ", False), ("world", False)]
    assert len(fake_openai.requests) == 1
    request = fake_openai.requests[0]
    assert request.method == "POST" and request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer sk-test"
    assert request.json == {
        "model": "test-model",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello world"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def test_calls_share_one_pooled_connection(llm: LLMClient, fake_openai: FakeOpenAI) -> None:
    for n in range(3):
        await ask(llm, f"call {n}")
    peers = {request.peer for request in fake_openai.requests}
    assert len(fake_openai.requests) == 3 and len(peers) == 1, peers


async def test_concurrent_calls(llm: LLMClient, fake_openai: FakeOpenAI) -> None:
    answers = await asyncio.gather(*(ask(llm, f"call {n}") for n in range(20)))
    assert [a.text for a in answers] == [f"[test-model] call {n}" for n in range(20)]
    assert sum(a.completion_tokens for a in answers) == 60


async def test_429_then_success_honours_retry_after(
    llm: LLMClient, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(resilient, "BACKOFF_BASE_S", 10.0)  # ignoring Retry-After: 0 would wait seconds
    fake_openai.plan(Reply.status(429, retry_after="0"))
    started = time.monotonic()
    assert (await ask(llm)).text == "[test-model] hello world"
    assert time.monotonic() - started < 1.0
    assert len(fake_openai.requests) == 2


async def test_retry_after_seconds_are_waited(llm: LLMClient, fake_openai: FakeOpenAI) -> None:
    fake_openai.plan(Reply.status(503, retry_after="1"))
    assert (await ask(llm)).text == "[test-model] hello world"
    first, second = fake_openai.requests
    assert second.at - first.at >= 0.9


async def test_retry_after_as_an_http_date(
    llm: LLMClient, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    waits: list[float | None] = []

    def spy(attempt: int, retry_after: float | None) -> float:
        waits.append(retry_after)
        return 0.0

    monkeypatch.setattr(resilient, "retry_delay", spy)
    now = datetime.now(UTC)
    fake_openai.plan(
        Reply.status(429, retry_after=format_datetime(now + timedelta(seconds=20), usegmt=True)),
        Reply.status(503, retry_after=format_datetime(now + timedelta(hours=1), usegmt=True)),
    )
    assert (await ask(llm, "u")).text == "[test-model] u"
    assert len(fake_openai.requests) == 3 and len(waits) == 2
    assert waits[0] is not None and 17.0 < waits[0] <= 20.0
    assert waits[1] == MAX_RETRY_AFTER_S


def headers(retry_after: str) -> httpx.Headers:
    return httpx.Headers({"Retry-After": retry_after})


def test_retry_after_parsing() -> None:
    assert retry_after_seconds(httpx.Headers()) is None
    assert retry_after_seconds(headers("2")) == 2.0
    assert retry_after_seconds(headers("3600")) == MAX_RETRY_AFTER_S
    for bad in ("-1", "nan", "inf", "soon", "Mon, 99 Foo 2024 00:00:00 GMT"):
        assert retry_after_seconds(headers(bad)) is None, bad
    past = format_datetime(datetime.now(UTC) - timedelta(minutes=5), usegmt=True)
    assert retry_after_seconds(headers(past)) == 0.0
    # "-0000" gives a naive datetime: still read as UTC.
    future = (datetime.now(UTC) + timedelta(seconds=10)).strftime("%a, %d %b %Y %H:%M:%S -0000")
    wait = retry_after_seconds(headers(future))
    assert wait is not None and 8.0 < wait <= 10.0


async def test_a_hang_past_the_timeout_is_retried_then_transient(llm: LLMClient, fake_openai: FakeOpenAI) -> None:
    fake_openai.always(Reply.hang(5))
    started = time.monotonic()
    with pytest.raises(TransientLLMError, match="STORYFLOW_LLM_TIMEOUT"):
        await ask(llm)
    elapsed = time.monotonic() - started
    assert len(fake_openai.requests) == 3  # llm_retries + 1
    assert 0.85 < elapsed < 2.5, elapsed


async def test_a_hang_then_success(llm: LLMClient, fake_openai: FakeOpenAI) -> None:
    fake_openai.plan(Reply.hang(5))
    assert (await ask(llm)).text == "[test-model] hello world"
    assert len(fake_openai.requests) == 2


async def test_a_5xx_storm_ends_in_transient_error(llm: LLMClient, fake_openai: FakeOpenAI) -> None:
    fake_openai.always(Reply.status(500))
    with pytest.raises(TransientLLMError, match="500"):
        await ask(llm)
    assert len(fake_openai.requests) == 3


@pytest.mark.parametrize("code", [400, 401, 404, 422])
async def test_other_4xx_fail_at_once(llm: LLMClient, fake_openai: FakeOpenAI, code: int) -> None:
    fake_openai.plan(Reply.status(code, retry_after="0"))
    with pytest.raises(LLMRequestError, match=str(code)):
        await ask(llm)
    assert len(fake_openai.requests) == 1


@pytest.mark.parametrize("reply", [Reply(raw=b"<html>proxy</html>"), Reply(raw=b"data: [DONE]\n\n")])
async def test_a_success_without_a_completion_fails_at_once(
    llm: LLMClient, fake_openai: FakeOpenAI, reply: Reply
) -> None:
    fake_openai.plan(reply)
    with pytest.raises(LLMRequestError):
        await ask(llm)
    assert len(fake_openai.requests) == 1


async def test_connection_refused_is_transient() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = create_llm(llm_settings(f"http://127.0.0.1:{port}/v1"))
    try:
        with pytest.raises(TransientLLMError, match="Connect"):
            await ask(client)
    finally:
        await client.aclose()


def test_create_llm_picks_the_provider(fake_openai: FakeOpenAI) -> None:
    assert create_llm(Settings()).provider == "echo"  # the default
    client = create_llm(llm_settings(fake_openai.base_url))
    assert isinstance(client, ResilientLLM) and isinstance(client.inner, OpenAILLM)


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
    # One pooled client for the worker process, made at start-up, closed at shutdown.
    assert len(clients) == 1 and clients[0]._client.is_closed()


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
