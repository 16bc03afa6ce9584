"""Redis going away and coming back (kill -9, append-only file on): nothing acknowledged is lost."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from infra.embedded_redis import EmbeddedRedis
from tests.conftest import Processes, api_client, make_settings, wait_for

pytestmark = [pytest.mark.timeout(120)]
TERMINAL = {"complete", "failed", "cancelled"}


async def submit_many(client: httpx.AsyncClient, count: int) -> list[str]:
    job_ids = []
    for i in range(count):
        response = await client.post("/run", json={"input": f"text {i}", "story_id": f"s{i}"})
        assert response.status_code == 202
        job_ids.append(response.json()["job_id"])
    return job_ids


async def all_terminal(client: httpx.AsyncClient, job_ids: list[str], timeout: float) -> list[dict]:
    async def finished() -> list[dict] | None:
        try:
            runs = [(await client.get(f"/run/{job_id}")).json() for job_id in job_ids]
        except httpx.HTTPError:
            return None
        return runs if all(run.get("status") in TERMINAL for run in runs) else None

    result: list[dict] = await wait_for(finished, timeout=timeout, interval=0.2)
    return result


async def test_outage_answers_503_then_recovers_and_runs_complete(own_redis: EmbeddedRedis) -> None:
    processes = Processes(own_redis.url)
    try:
        worker = processes.worker(STORYFLOW_ECHO_DELAY="0.5")
        async for client in api_client(make_settings(own_redis.url)):
            job_ids = await submit_many(client, 5)
            await asyncio.sleep(0.3)
            own_redis.kill()
            down = await client.post("/run", json={"input": "x", "story_id": "down"})
            assert down.status_code == 503 and down.headers["retry-after"]
            assert (await client.get(f"/run/{job_ids[0]}")).status_code == 503
            await asyncio.sleep(3)
            assert worker.poll() is None, "the worker waits for Redis instead of exiting"
            own_redis.start()

            async def accepting(client: httpx.AsyncClient = client) -> bool:
                reply = await client.post("/run", json={"input": "x", "story_id": "after"})
                return reply.status_code == 202

            await wait_for(accepting, timeout=10)
            runs = await all_terminal(client, job_ids, timeout=40)
            assert [run["status"] for run in runs] == ["complete"] * 5
    finally:
        processes.stop_all()


async def test_kill_9_of_redis_loses_no_acknowledged_run(own_redis: EmbeddedRedis) -> None:
    processes = Processes(own_redis.url)
    try:
        processes.worker(STORYFLOW_ECHO_DELAY="0.2")
        processes.worker(STORYFLOW_ECHO_DELAY="0.2")
        async for client in api_client(make_settings(own_redis.url)):
            job_ids = await submit_many(client, 30)
            own_redis.kill()
            await asyncio.sleep(1)
            own_redis.start()
            runs = await all_terminal(client, job_ids, timeout=60)
            assert [run["status"] for run in runs] == ["complete"] * 30
            memories = [(await client.get(f"/memory/s{i}")).json() for i in range(30)]
            assert all(memory["agents"]["analyst"]["runs"] == 1 for memory in memories)
    finally:
        processes.stop_all()
