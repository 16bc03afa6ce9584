"""Flows that decide: loops steered by actions, max_visits, invalid actions, and human steps."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from infra import keys
from infra.settings import Settings
from tests.conftest import Processes, api_client, make_settings, record, until_status, wait_for
from tests.support.fake_openai import FakeOpenAI, Reply, fake_openai_fixture, fake_openai_server  # noqa: F401

pytestmark = [pytest.mark.timeout(60)]


async def put_docs(client: httpx.AsyncClient) -> None:
    for doc_id in ("prd", "architecture"):
        await client.put(f"/docs/{doc_id}", json={"content": f"the {doc_id}"})


async def run_flow(client: httpx.AsyncClient, flow: str, text: str, story_id: str = "s1") -> str:
    response = await client.post("/run", json={"flow": flow, "story_id": story_id, "input": text})
    assert response.status_code == 202, response.text
    job_id: str = response.json()["job_id"]
    return job_id


def path(run: dict[str, Any]) -> list[tuple[str, str | None]]:
    return [(step["node"], step["action"]) for step in run["steps"]]


async def test_story_approves_at_once_with_echo(client: httpx.AsyncClient, background_worker: Any) -> None:
    await put_docs(client)
    run = await until_status(client, await run_flow(client, "story", "Saved cards."), "complete", "failed")
    assert run["status"] == "complete" and run["result"] == "[qa] [dev] [sm] Saved cards."
    assert path(run) == [("sm", None), ("dev", None), ("qa", "approve")]
    assert run["outputs"]["qa"] == "[qa] [dev] [sm] Saved cards."  # the ACTION line is not part of the output


async def test_a_revise_loops_back_to_dev_once(client: httpx.AsyncClient, background_worker: Any) -> None:
    await put_docs(client)
    job_id = await run_flow(client, "story", "Saved cards.\nACTION: revise")
    run = await until_status(client, job_id, "complete", "failed")
    assert run["status"] == "complete", run
    assert path(run) == [("sm", None), ("dev", None), ("qa", "revise"), ("dev", None), ("qa", "approve")]
    assert [step["visit"] for step in run["steps"]] == [1, 1, 1, 2, 2]
    assert run["result"] == "[qa] [dev] [qa] [dev] [sm] Saved cards."
    assert run["progress"]["done"] == ["sm", "dev", "qa", "dev", "qa"]
    events = (await client.get(f"/run/{job_id}/events")).text
    assert '"action":"revise"' in events and "ACTION:" not in events.replace("\\nACTION: revise", "")


async def test_a_loop_past_max_visits_fails(client: httpx.AsyncClient, background_worker: Any) -> None:
    run = await until_status(client, await run_flow(client, "loop", "go"), "complete", "failed")
    assert run["status"] == "failed" and run["error"]["type"] == "max_visits", run
    assert [step["visit"] for step in run["steps"]] == [1, 2]


async def test_an_answer_without_an_action_is_asked_once_more_then_fails(
    redis_url: str, redis: Redis, fake_openai: FakeOpenAI
) -> None:
    settings = make_settings(
        redis_url, llm_provider="openai", llm_base_url=fake_openai.base_url, llm_model="m", llm_retries=0
    )
    fake_openai.plan(Reply.ok("a draft"), Reply.ok("a plan"), Reply.ok("looks fine"), Reply.ok("still fine"))
    async for client in api_client(settings):
        await put_docs(client)
        job_id = await run_flow(client, "story", "Saved cards.")
        from tests.conftest import drain

        await drain(settings)
        run = await record(client, job_id)
    assert run["status"] == "failed" and run["error"]["type"] == "invalid_action", run
    qa_requests = fake_openai.requests[2:]
    assert len(qa_requests) == 2
    assert "ACTION: <one of approve, revise>" in qa_requests[0].json["messages"][0]["content"]
    assert "no valid action line" in qa_requests[1].json["messages"][0]["content"]
    assert run["usage"]["calls"] == 4  # the calls that returned count, the failed step's included


# -- human steps ---------------------------------------------------------------------------------


async def awaiting(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    return await until_status(client, job_id, "awaiting_input", "complete", "failed")


async def test_a_person_approves_and_the_run_goes_on(client: httpx.AsyncClient, background_worker: Any) -> None:
    await put_docs(client)
    job_id = await run_flow(client, "story_approval", "Saved cards.")
    run = await awaiting(client, job_id)
    assert run["status"] == "awaiting_input", run
    assert run["awaiting"]["node"] == "po" and run["awaiting"]["actions"] == ["approve", "reject"]
    assert run["awaiting"]["prompt"] == "Approve the story draft?"
    assert background_worker.job_counter == 0  # no worker slot is held while it waits
    answered = await client.post(f"/run/{job_id}/input", json={"action": "approve", "text": "Approved, ship it."})
    assert answered.status_code == 202, answered.text
    run = await until_status(client, job_id, "complete", "failed")
    assert run["status"] == "complete" and run["result"] == "[qa] [dev] Approved, ship it."
    assert path(run) == [("sm", None), ("po", "approve"), ("dev", None), ("qa", "approve")]
    events = (await client.get(f"/run/{job_id}/events")).text
    assert "event: awaiting_input" in events


async def test_a_rejection_ends_the_run_with_the_draft(client: httpx.AsyncClient, background_worker: Any) -> None:
    await put_docs(client)
    job_id = await run_flow(client, "story_approval", "Saved cards.")
    await awaiting(client, job_id)
    assert (await client.post(f"/run/{job_id}/input", json={"action": "reject"})).status_code == 202
    run = await until_status(client, job_id, "complete", "failed")
    assert run["status"] == "complete" and run["result"] == "[sm] Saved cards."
    assert path(run) == [("sm", None), ("po", "reject")]


async def test_input_answers_409_and_422(client: httpx.AsyncClient, background_worker: Any) -> None:
    await put_docs(client)
    job_id = await run_flow(client, "story_approval", "Saved cards.")
    await awaiting(client, job_id)
    wrong = await client.post(f"/run/{job_id}/input", json={"action": "maybe"})
    assert wrong.status_code == 422 and "approve" in wrong.text
    assert (await client.post(f"/run/{job_id}/input", json={})).status_code == 422
    assert (await client.post(f"/run/{'0' * 32}/input", json={"action": "approve"})).status_code == 404
    done = await run_flow(client, "default", "x", story_id="other")
    await until_status(client, done, "complete")
    assert (await client.post(f"/run/{done}/input", json={"action": "approve"})).status_code == 409


async def test_two_answers_at_once_have_one_effect(client: httpx.AsyncClient, background_worker: Any) -> None:
    await put_docs(client)
    job_id = await run_flow(client, "story_approval", "Saved cards.")
    await awaiting(client, job_id)
    answers = await asyncio.gather(
        *(client.post(f"/run/{job_id}/input", json={"action": a}) for a in ["approve", "reject"] * 5)
    )
    assert sorted(answer.status_code for answer in answers) == [202] + [409] * 9
    run = await until_status(client, job_id, "complete", "failed")
    assert [step["node"] for step in run["steps"]].count("po") == 1


async def test_an_answer_racing_a_cancel_has_one_effect(client: httpx.AsyncClient, background_worker: Any) -> None:
    await put_docs(client)
    for round_ in range(5):
        job_id = await run_flow(client, "story_approval", "Saved cards.", story_id=f"race-{round_}")
        await awaiting(client, job_id)
        answer, cancel = await asyncio.gather(
            client.post(f"/run/{job_id}/input", json={"action": "reject"}), client.delete(f"/run/{job_id}")
        )
        run = await until_status(client, job_id, "complete", "cancelled", "failed")
        assert cancel.status_code in (200, 409) and answer.status_code in (202, 409)
        if answer.status_code == 409:  # the cancel came first: the answer did nothing
            assert run["status"] == "cancelled" and path(run)[-1] == ("po", None)
        else:  # the answer came first: the cancel stopped a queued run, or came after the end
            assert run["status"] in ("cancelled", "complete")
            assert [step["node"] for step in run["steps"]].count("po") == 1


async def test_later_runs_of_the_story_wait_behind_a_run_awaiting_input(
    client: httpx.AsyncClient, background_worker: Any
) -> None:
    await put_docs(client)
    first = await run_flow(client, "story_approval", "Saved cards.")
    await awaiting(client, first)
    later = await run_flow(client, "default", "after", story_id="s1")
    await asyncio.sleep(0.5)
    assert (await record(client, later))["status"] == "queued"
    assert (await client.delete(f"/run/{first}")).status_code == 200  # cancelling works while awaiting
    assert (await until_status(client, later, "complete"))["status"] == "complete"


@pytest.mark.slow
async def test_a_run_awaiting_too_long_fails_with_input_timeout(
    redis_url: str, redis: Redis, background_worker_factory: Any
) -> None:
    settings = make_settings(redis_url, input_timeout=0.5)
    await background_worker_factory(settings)
    async for client in api_client(settings):
        await put_docs(client)
        job_id = await run_flow(client, "story_approval", "Saved cards.")
        run = await until_status(client, job_id, "failed", "complete", timeout=15)
        assert run["status"] == "failed" and run["error"]["type"] == "input_timeout", run
        assert run["awaiting"] is None
        assert not await redis.zcard(keys.AWAITING)


# -- with real processes ---------------------------------------------------------------------------


async def test_a_worker_killed_right_after_an_answer_resumes_after_the_human_step(
    client: httpx.AsyncClient, processes: Processes
) -> None:
    first = processes.worker()
    job_id = await run_flow(client, "approve_then_slow", "sleep=3")
    await awaiting(client, job_id)
    assert (await client.post(f"/run/{job_id}/input", json={"action": "go"})).status_code == 202
    await until_status(client, job_id, "in_progress")
    first.send_signal(signal.SIGKILL)
    processes.worker()
    run = await until_status(client, job_id, "complete", "failed", timeout=30)
    assert run["status"] == "complete", run
    assert path(run) == [("ask", "go"), ("work", None)]  # the answer was kept, and applied once
    memory = (await client.get("/memory/s1")).json()
    assert memory["story"]["slow_done"] == 1


async def test_a_run_awaiting_input_survives_api_and_worker_restarts(
    redis_url: str, redis: Redis, processes: Processes, settings: Settings
) -> None:
    from tests.conftest import wait_http_ok

    port = 18000 + (hash(redis_url) % 1000)
    worker, api = processes.worker(), processes.api(port)
    base = f"http://127.0.0.1:{port}"
    await wait_http_ok(f"{base}/healthz")
    async with httpx.AsyncClient(base_url=base) as client:
        await put_docs(client)
        job_id = await run_flow(client, "story_approval", "Saved cards.")
        await awaiting(client, job_id)
    for process in (worker, api):
        process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(process.wait, 15)
    processes.worker()
    processes.api(port)
    await wait_http_ok(f"{base}/healthz")
    async with httpx.AsyncClient(base_url=base) as client:
        assert (await record(client, job_id))["status"] == "awaiting_input"
        assert (await client.post(f"/run/{job_id}/input", json={"action": "approve"})).status_code == 202
        run = await until_status(client, job_id, "complete", "failed", timeout=20)
    assert run["status"] == "complete" and run["result"] == "[qa] [dev] [sm] Saved cards."

    async def nothing_left() -> bool:
        return not await redis.zcard(keys.AWAITING)

    await wait_for(nothing_left)


async def test_an_answered_run_goes_on_at_once_not_at_the_next_poll(
    redis_url: str, redis: Redis, background_worker_factory: Any
) -> None:
    settings = make_settings(redis_url, poll_interval=10)  # a missed wake-up would cost 10 s
    await background_worker_factory(settings)
    async for client in api_client(settings):
        await put_docs(client)
        job_id = await run_flow(client, "story_approval", "Saved cards.")
        await awaiting(client, job_id)
        await client.post(f"/run/{job_id}/input", json={"action": "approve"})
        run = await until_status(client, job_id, "complete", "failed", timeout=1.0)  # an idle loop waits 2 s
    assert run["status"] == "complete"


async def test_post_run_wait_answers_when_the_run_awaits_a_person(
    client: httpx.AsyncClient, background_worker: Any
) -> None:
    await put_docs(client)
    body = {"flow": "story_approval", "story_id": "s1", "input": "Saved cards."}
    answer = await client.post("/run", json=body, params={"wait": 10})
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "awaiting_input" and answer.json()["awaiting"]["node"] == "po"
