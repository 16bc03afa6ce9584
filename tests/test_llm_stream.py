"""Streamed tokens, usage and budgets, seen as a client sees them (SSE over the API, real Redis)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from tests.conftest import api_client, make_settings, until_status
from tests.support.fake_openai import FakeOpenAI, fake_openai_fixture, fake_openai_server  # noqa: F401

pytestmark = [pytest.mark.timeout(60)]
LONG_INPUT = " ".join(f"word{i}" for i in range(40))


async def read_events(
    client: httpx.AsyncClient, job_id: str, *, last_id: str | None = None, stop_after: int = 0
) -> list[tuple[str, str, dict[str, Any]]]:
    import json

    headers = {"Last-Event-ID": last_id} if last_id else {}
    events: list[tuple[str, str, dict[str, Any]]] = []
    async with client.stream("GET", f"/run/{job_id}/events", headers=headers) as response:
        event_id = name = ""
        async for line in response.aiter_lines():
            if line.startswith("id:"):
                event_id = line[3:].strip()
            elif line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                events.append((event_id, name, json.loads(line[5:].strip())))
                if stop_after and len(events) >= stop_after:
                    break
    return events


def joined(events: list[tuple[str, str, dict[str, Any]]], node: str) -> str:
    text = ""
    for _, name, data in events:
        if name == "token" and data["node"] == node:
            text = data["text"] if data.get("restart") else text + data["text"]
    return text


async def test_tokens_stream_before_the_step_ends_and_join_to_its_output(
    redis_url: str, redis: Redis, background_worker_factory: Any
) -> None:
    settings = make_settings(redis_url, echo_delay=1.0, token_flush_ms=20)
    await background_worker_factory(settings)
    async for client in api_client(settings):
        job_id = (await client.post("/run", json={"story_id": "s", "input": LONG_INPUT})).json()["job_id"]
        events = await read_events(client, job_id)
        run = (await client.get(f"/run/{job_id}")).json()
    names = [name for _, name, _ in events]
    assert names[-1] == "complete"
    first_token, analyst_done = names.index("token"), names.index("node_finished")
    assert first_token < analyst_done and names[first_token:analyst_done].count("token") > 3  # coalesced, not one
    for node in ("analyst", "summarizer"):
        assert joined(events, node) == run["outputs"][node]


async def test_a_client_resumes_in_the_middle_of_a_steps_tokens(
    redis_url: str, redis: Redis, background_worker_factory: Any
) -> None:
    settings = make_settings(redis_url, echo_delay=1.0, token_flush_ms=20)
    await background_worker_factory(settings)
    async for client in api_client(settings):
        job_id = (await client.post("/run", json={"story_id": "s", "input": LONG_INPUT})).json()["job_id"]
        first = await read_events(client, job_id, stop_after=5)
        assert first[-1][1] == "token"
        rest = await read_events(client, job_id, last_id=first[-1][0])
        run = (await client.get(f"/run/{job_id}")).json()
    assert joined(first + rest, "analyst") == run["outputs"]["analyst"]
    assert not {event_id for event_id, _, _ in first} & {event_id for event_id, _, _ in rest}


async def test_usage_in_the_record_is_what_the_server_reported(
    redis_url: str, redis: Redis, fake_openai: FakeOpenAI, background_worker_factory: Any
) -> None:
    prices = {"test-model": {"input": 2.0, "output": 8.0}}
    settings = make_settings(
        redis_url, llm_provider="openai", llm_base_url=fake_openai.base_url, llm_model="test-model",
        llm_prices=prices,
    )  # fmt: skip
    await background_worker_factory(settings)
    async for client in api_client(settings):
        job_id = (await client.post("/run", json={"story_id": "s", "input": "Users want PDF export."})).json()["job_id"]
        run = await until_status(client, job_id, "complete", "failed")
    words = [sum(len(m["content"].split()) for m in r.json["messages"]) for r in fake_openai.requests]
    answers = [len(r.json["messages"][1]["content"].split()) + 1 for r in fake_openai.requests]  # "[test-model] " + it
    usage = run["usage"]
    assert usage["prompt_tokens"] == sum(words) and usage["completion_tokens"] == sum(answers)
    assert usage["total_tokens"] == sum(words) + sum(answers) and usage["calls"] == 2
    assert usage["by_agent"]["analyst"] == {"prompt_tokens": words[0], "completion_tokens": answers[0], "calls": 1}
    assert [step["usage"] for step in run["steps"]] == [
        {"prompt_tokens": words[0], "completion_tokens": answers[0]},
        {"prompt_tokens": words[1], "completion_tokens": answers[1]},
    ]
    assert usage["cost_usd"] == pytest.approx((sum(words) * 2.0 + sum(answers) * 8.0) / 1_000_000)


async def test_a_run_over_its_token_budget_fails_after_the_call_that_crossed_it(
    redis_url: str, redis: Redis, background_worker_factory: Any
) -> None:
    settings = make_settings(redis_url, max_run_tokens=30)
    await background_worker_factory(settings)
    async for client in api_client(settings):
        job_id = (await client.post("/run", json={"story_id": "s", "input": LONG_INPUT})).json()["job_id"]
        run = await until_status(client, job_id, "complete", "failed")
    assert run["status"] == "failed" and run["error"]["type"] == "budget_exceeded", run
    assert run["usage"]["calls"] == 1 and run["usage"]["total_tokens"] > 30
    assert [(step["node"], step["status"]) for step in run["steps"]] == [("analyst", "failed")]
