"""Durable runs with real worker processes, counting LLM calls at a fake OpenAI server on loopback:
a crash or a hand-back resumes at the first unfinished step; a retry resumes where the run stopped."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import httpx
import pytest

from tests.conftest import Processes, record, until_status, wait_for
from tests.support.fake_openai import FakeOpenAI, Reply, fake_openai_fixture, fake_openai_server  # noqa: F401

pytestmark = [pytest.mark.timeout(90)]
PROMPTS = {"sm": "You are a scrum master", "dev": "You are a senior developer", "qa": "You are a QA engineer"}
STORY = {"flow": "story", "story_id": "checkout", "input": "Pay with a saved card.\nACTION: approve"}


def llm_env(fake: FakeOpenAI, **extra: str) -> dict[str, str]:
    return {
        "STORYFLOW_LLM_PROVIDER": "openai", "STORYFLOW_LLM_BASE_URL": fake.base_url,
        "STORYFLOW_LLM_MODEL": "test-model", "STORYFLOW_LLM_TIMEOUT": "60", "STORYFLOW_LLM_RETRIES": "0", **extra,
    }  # fmt: skip


def calls(fake: FakeOpenAI) -> dict[str, int]:
    """LLM requests the fake received, by the agent that sent them."""
    counted = dict.fromkeys(PROMPTS, 0)
    for request in fake.requests:
        system = request.json["messages"][0]["content"]
        counted[next(agent for agent, prompt in PROMPTS.items() if system.startswith(prompt))] += 1
    return counted


async def put_docs(client: httpx.AsyncClient) -> None:
    for doc_id in ("prd", "architecture"):
        assert (await client.put(f"/docs/{doc_id}", json={"content": f"the {doc_id}"})).status_code in (200, 201)


async def start_story(client: httpx.AsyncClient) -> str:
    await put_docs(client)
    response = await client.post("/run", json=STORY)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["job_id"]
    return job_id


async def requests_reach(fake: FakeOpenAI, count: int) -> None:
    async def reached() -> bool:
        return len(fake.requests) >= count

    await wait_for(reached, timeout=20)


async def test_a_killed_worker_costs_only_the_call_in_flight(
    client: httpx.AsyncClient, processes: Processes, fake_openai: FakeOpenAI
) -> None:
    fake_openai.plan(Reply.ok(), Reply.hang(30))  # sm answers, dev's call hangs
    first = processes.worker(**llm_env(fake_openai))
    job_id = await start_story(client)
    await requests_reach(fake_openai, 2)
    first.send_signal(signal.SIGKILL)
    processes.worker(**llm_env(fake_openai))
    run = await until_status(client, job_id, "complete", "failed", timeout=30)
    assert run["status"] == "complete" and run["attempts"] == 2, run
    assert calls(fake_openai) == {"sm": 1, "dev": 2, "qa": 1}  # sm's finished call was not paid again
    assert [(s["node"], s["status"], s["attempt"]) for s in run["steps"]] == [
        ("sm", "complete", 1), ("dev", "complete", 2), ("qa", "complete", 2),
    ]  # fmt: skip
    assert run["progress"] == {"done": ["sm", "dev", "qa"], "current": None, "total": 3}
    memory = (await client.get("/memory/checkout")).json()
    assert {agent: memory["agents"][agent]["runs"] for agent in PROMPTS} == dict.fromkeys(PROMPTS, 1)  # one commit


async def test_a_run_handed_back_at_sigterm_resumes_at_its_step_elsewhere(
    client: httpx.AsyncClient, processes: Processes, fake_openai: FakeOpenAI
) -> None:
    fake_openai.plan(Reply.ok(), Reply.hang(30))
    stopping = processes.worker(**llm_env(fake_openai, STORYFLOW_SHUTDOWN_GRACE="0.5"))
    job_id = await start_story(client)
    await requests_reach(fake_openai, 2)
    stopping.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(stopping.wait, 15) == 0
    handed_back = await record(client, job_id)
    assert handed_back["status"] == "queued" and handed_back["outputs"] == {"sm": handed_back["steps"][0]["output"]}
    processes.worker(**llm_env(fake_openai))
    run = await until_status(client, job_id, "complete", "failed", timeout=30)
    assert run["status"] == "complete" and run["attempts"] == 1, run  # a hand-back is not an attempt
    assert calls(fake_openai) == {"sm": 1, "dev": 2, "qa": 1}


async def test_a_failed_run_retries_at_its_failed_step_or_from_a_node(
    client: httpx.AsyncClient, processes: Processes, fake_openai: FakeOpenAI
) -> None:
    fake_openai.plan(Reply.ok(), Reply.status(400))  # dev's call is refused for good
    processes.worker(**llm_env(fake_openai))
    job_id = await start_story(client)
    failed = await until_status(client, job_id, "complete", "failed", timeout=20)
    assert failed["status"] == "failed" and failed["error"]["type"] == "LLMRequestError", failed
    assert [(s["node"], s["status"]) for s in failed["steps"]] == [("sm", "complete"), ("dev", "failed")]

    retried = await client.post(f"/run/{job_id}/retry")
    assert retried.status_code == 202, retried.text
    assert retried.json()["status"] == "queued" and [s["node"] for s in retried.json()["steps"]] == ["sm"]
    run = await until_status(client, job_id, "complete", "failed", timeout=20)
    assert run["status"] == "complete" and calls(fake_openai) == {"sm": 1, "dev": 2, "qa": 1}
    assert (await client.post(f"/run/{job_id}/retry")).status_code == 409  # complete: nothing to retry

    # Cancel-free way back to failed: a new run of the same kind, failed, then retried from the start.
    fake_openai.plan(Reply.ok(), Reply.status(400))
    second = (await client.post("/run", json=STORY)).json()["job_id"]
    await until_status(client, second, "failed", timeout=20)
    before = calls(fake_openai)
    assert (await client.post(f"/run/{second}/retry", json={"from": "sm"})).status_code == 202
    rerun = await until_status(client, second, "complete", "failed", timeout=20)
    assert rerun["status"] == "complete" and [s["node"] for s in rerun["steps"]] == ["sm", "dev", "qa"]
    after = calls(fake_openai)
    assert {agent: after[agent] - before[agent] for agent in PROMPTS} == dict.fromkeys(PROMPTS, 1)
    events = (await client.get(f"/run/{second}/events")).text
    assert "event: retried" in events


async def test_retry_answers_409_422_and_404(client: httpx.AsyncClient, processes: Processes) -> None:
    processes.worker(STORYFLOW_ECHO_DELAY="2")
    running = (await client.post("/run", json={"story_id": "s1", "input": "x"})).json()["job_id"]
    await until_status(client, running, "in_progress")
    assert (await client.post(f"/run/{running}/retry")).status_code == 409
    assert (await client.delete(f"/run/{running}")).status_code == 200
    unknown = await client.post(f"/run/{running}/retry", json={"from": "nowhere"})
    assert unknown.status_code == 422 and "unknown node 'nowhere'" in unknown.text
    assert (await client.post(f"/run/{'0' * 32}/retry")).status_code == 404
    assert (await client.post(f"/run/{running}/retry", json={"from": 3})).status_code == 422


@pytest.mark.parametrize("body", [{"from": "analyst"}, None])
async def test_a_cancelled_run_can_be_retried(client: httpx.AsyncClient, processes: Processes, body: Any) -> None:
    processes.worker(STORYFLOW_ECHO_DELAY="0.3")
    job_id = (await client.post("/run", json={"story_id": "s1", "input": "x"})).json()["job_id"]
    await until_status(client, job_id, "in_progress")
    assert (await client.delete(f"/run/{job_id}")).status_code == 200
    assert (await client.post(f"/run/{job_id}/retry", json=body)).status_code == 202
    run = await until_status(client, job_id, "complete", "failed", timeout=20)
    assert run["status"] == "complete" and run["result"] == "[summarizer] [analyst] x"


async def test_a_resumed_run_refuses_documents_changed_under_it_and_a_retry_takes_them(
    client: httpx.AsyncClient, processes: Processes, fake_openai: FakeOpenAI
) -> None:
    fake_openai.plan(Reply.ok(), Reply.hang(30))  # sm answers, dev's call hangs
    first = processes.worker(**llm_env(fake_openai))
    job_id = await start_story(client)
    await requests_reach(fake_openai, 2)
    first.send_signal(signal.SIGKILL)
    assert (await client.put("/docs/prd", json={"content": "the prd, revised"})).status_code == 200
    processes.worker(**llm_env(fake_openai))
    run = await until_status(client, job_id, "complete", "failed", timeout=30)
    assert run["status"] == "failed" and run["error"]["type"] == "documents_changed", run
    assert "prd" in run["error"]["message"] and calls(fake_openai) == {"sm": 1, "dev": 1, "qa": 0}
    assert (await client.post(f"/run/{job_id}/retry")).status_code == 202
    run = await until_status(client, job_id, "complete", "failed", timeout=30)
    assert run["status"] == "complete", run
    assert "the prd, revised" in fake_openai.requests[-1].json["messages"][0]["content"]
