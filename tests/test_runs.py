"""Runs executed by an arq worker in this process: results, failures, memory, ordering, cancel, wait."""

from __future__ import annotations

import asyncio
from datetime import datetime
from itertools import pairwise

import httpx
import pytest
from redis.asyncio import Redis

from infra.settings import Settings
from tests.conftest import RUN, api_client, drain, make_settings, record, submit


async def test_default_flow_completes_with_outputs_and_memory(client: httpx.AsyncClient, settings: Settings) -> None:
    job_id = await submit(client)
    await drain(settings)
    run = await record(client, job_id)
    assert run["status"] == "complete" and run["attempts"] == 1 and run["error"] is None
    assert run["outputs"] == {
        "analyst": "[analyst] Users want PDF export.",
        "summarizer": "[summarizer] [analyst] Users want PDF export.",
    }
    assert run["result"] == run["outputs"]["summarizer"]
    assert run["progress"] == {"done": ["analyst", "summarizer"], "current": None, "total": 2}
    assert run["started_at"] <= run["finished_at"]
    memory = (await client.get("/memory/story-1")).json()
    assert memory["story"] == {"analysis": run["outputs"]["analyst"], "summary": run["result"]}
    assert memory["agents"]["analyst"] == {"runs": 1, "last_output": run["outputs"]["analyst"]}


async def test_story_flow_reads_documents(client: httpx.AsyncClient, settings: Settings) -> None:
    for doc_id in ("prd", "architecture"):
        await client.put(f"/docs/{doc_id}", json={"content": f"the {doc_id}"})
    job_id = await submit(client, flow="story")
    await drain(settings)
    run = await record(client, job_id)
    assert run["status"] == "complete"
    assert list(run["outputs"]) == ["sm", "dev", "qa"]
    assert run["result"] == "[qa] [dev] [sm] Users want PDF export."


async def test_a_document_deleted_after_submission_fails_the_run(client: httpx.AsyncClient, settings: Settings) -> None:
    for doc_id in ("prd", "architecture"):
        await client.put(f"/docs/{doc_id}", json={"content": "x"})
    job_id = await submit(client, flow="story")
    await client.delete("/docs/prd")
    await drain(settings)
    run = await record(client, job_id)
    assert run["status"] == "failed" and run["error"]["type"] == "missing_documents"


async def test_failing_agent_fails_the_run_and_writes_no_memory(client: httpx.AsyncClient, settings: Settings) -> None:
    job_id = await submit(client, flow="explode")
    await drain(settings)
    run = await record(client, job_id)
    assert run["status"] == "failed"
    assert run["error"] == {"type": "ValueError", "message": "the boom agent always fails"}
    assert run["result"] is None and run["outputs"] == {}
    assert run["finished_at"] is not None
    assert (await client.get("/memory/story-1")).status_code == 404


async def test_memory_is_isolated_between_stories_and_agents(client: httpx.AsyncClient, settings: Settings) -> None:
    await submit(client, story_id="alpha", input="alpha text")
    await submit(client, story_id="beta", input="beta text")
    await drain(settings)
    alpha = (await client.get("/memory/alpha")).json()
    beta = (await client.get("/memory/beta")).json()
    assert "beta" not in str(alpha) and "alpha" not in str(beta)
    assert set(alpha["agents"]["analyst"]) == {"runs", "last_output"}
    assert "summarizer" not in alpha["agents"]["analyst"]["last_output"]
    assert alpha["agents"]["summarizer"]["last_output"].startswith("[summarizer]")


async def test_later_runs_of_a_story_build_on_its_memory(client: httpx.AsyncClient, settings: Settings) -> None:
    await submit(client, input="first")
    await submit(client, input="second")
    await drain(settings)
    memory = (await client.get("/memory/story-1")).json()
    assert memory["agents"]["analyst"]["runs"] == 2
    assert memory["story"]["analysis"] == "[analyst] second"
    assert (await client.delete("/memory/story-1")).status_code == 204
    assert (await client.get("/memory/story-1")).status_code == 404


def _interval(run: dict) -> tuple[datetime, datetime]:
    parse = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00"))  # noqa: E731
    return parse(run["started_at"]), parse(run["finished_at"])


async def test_runs_of_one_story_never_overlap_and_keep_submission_order(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    same_story = [await submit(client, flow="slow", input="sleep=0.3", story_id="one") for _ in range(3)]
    others = [await submit(client, flow="slow", input="sleep=0.3", story_id=f"other-{i}") for i in range(3)]
    loop = asyncio.get_running_loop()
    started = loop.time()
    await drain(settings)
    elapsed = loop.time() - started
    runs = [await record(client, job_id) for job_id in same_story]
    assert all(run["status"] == "complete" and run["attempts"] == 1 for run in runs)
    intervals = [_interval(run) for run in runs]
    for (_, end), (next_start, _) in pairwise(intervals):
        assert end <= next_start
    assert [(await record(client, job_id))["status"] for job_id in others] == ["complete"] * 3
    assert elapsed < 0.3 * 6, "runs of different stories should run in parallel"


async def test_cancel_a_queued_run_it_never_starts(client: httpx.AsyncClient, settings: Settings) -> None:
    job_id = await submit(client)
    cancelled = await client.delete(f"/run/{job_id}")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    await drain(settings)
    run = await record(client, job_id)
    assert run["status"] == "cancelled" and run["started_at"] is None and run["attempts"] == 0
    assert (await client.delete(f"/run/{job_id}")).status_code == 409


async def test_cancelling_the_head_of_a_story_lets_the_next_run(client: httpx.AsyncClient, settings: Settings) -> None:
    first = await submit(client)
    second = await submit(client)
    await client.delete(f"/run/{first}")
    await drain(settings)
    assert (await record(client, second))["status"] == "complete"


async def test_cancel_a_finished_run_is_409(client: httpx.AsyncClient, settings: Settings) -> None:
    job_id = await submit(client)
    await drain(settings)
    response = await client.delete(f"/run/{job_id}")
    assert response.status_code == 409


@pytest.mark.slow
async def test_run_longer_than_the_job_timeout_fails_with_timeout(redis_url: str, redis: Redis) -> None:
    settings = make_settings(redis_url, job_timeout=1)
    async for client in api_client(settings):
        job_id = await submit(client, flow="slow", input="sleep=5")
        await drain(settings)
        run = await record(client, job_id)
        assert run["status"] == "failed" and run["error"]["type"] == "timeout"


async def test_wait_returns_the_finished_record(client: httpx.AsyncClient, background_worker: object) -> None:
    response = await client.post("/run", json=RUN, params={"wait": 10})
    assert response.status_code == 200
    assert response.json()["status"] == "complete"


async def test_wait_that_runs_out_answers_202(client: httpx.AsyncClient, background_worker: object) -> None:
    response = await client.post("/run", json={**RUN, "flow": "slow", "input": "sleep=2"}, params={"wait": 0.3})
    assert response.status_code == 202 and response.json()["status"] == "queued"


async def test_wait_outside_0_to_60_is_422(client: httpx.AsyncClient) -> None:
    assert (await client.post("/run", json=RUN, params={"wait": 61})).status_code == 422
    assert (await client.post("/run", json=RUN, params={"wait": -1})).status_code == 422


async def test_cancel_a_running_run_drops_its_writes(client: httpx.AsyncClient, background_worker: object) -> None:
    job_id = await submit(client, flow="slow_then_summary", input="sleep=5")

    async def running() -> bool:
        return (await record(client, job_id))["status"] == "in_progress"

    from tests.conftest import wait_for

    await wait_for(running)
    response = await client.delete(f"/run/{job_id}")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    await asyncio.sleep(1.0)
    run = await record(client, job_id)
    assert run["status"] == "cancelled" and run["outputs"] == {}
    assert (await client.get("/memory/story-1")).status_code == 404


async def test_readyz_is_ready_with_a_live_worker(client: httpx.AsyncClient, background_worker: object) -> None:
    from tests.conftest import wait_for

    async def ready() -> bool:
        return (await client.get("/readyz")).status_code == 200

    await wait_for(ready, timeout=5)
