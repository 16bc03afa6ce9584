"""Faults with real processes: killed and stopped workers, one story at a time, crash loops, fencing."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import time
from datetime import datetime
from itertools import pairwise
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from infra.settings import Settings
from tests.conftest import Processes, api_client, make_settings, record, submit, until_status

pytestmark = [pytest.mark.timeout(90)]


async def test_killed_worker_run_is_taken_over_within_15s(client: httpx.AsyncClient, processes: Processes) -> None:
    first = processes.worker(STORYFLOW_ECHO_DELAY="1.5")
    job_id = await submit(client)
    await until_status(client, job_id, "in_progress")
    first.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    processes.worker(STORYFLOW_ECHO_DELAY="0.1")
    run = await until_status(client, job_id, "complete", "failed", timeout=20)
    assert time.monotonic() - killed_at < 15
    assert run["status"] == "complete" and run["attempts"] == 2
    memory = (await client.get("/memory/story-1")).json()
    assert memory["agents"]["analyst"]["runs"] == 1 and memory["agents"]["summarizer"]["runs"] == 1


async def test_sigterm_finishes_short_runs_and_hands_back_long_ones(
    redis_url: str, redis: Redis, processes: Processes
) -> None:
    async for client in api_client(make_settings(redis_url)):
        stopping = processes.worker(STORYFLOW_SHUTDOWN_GRACE="1")
        short = await submit(client, flow="slow", input="sleep=0.5", story_id="short")
        long = await submit(client, flow="slow", input="sleep=4", story_id="long")
        await until_status(client, long, "in_progress")
        await until_status(client, short, "in_progress", "complete")
        stopping.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(stopping.wait, 15) == 0
        assert (await record(client, short))["status"] == "complete"
        handed_back = await record(client, long)
        assert handed_back["status"] == "queued" and handed_back["attempts"] == 0
        processes.worker()
        run = await until_status(client, long, "complete", "failed", timeout=20)
        assert run["status"] == "complete" and run["attempts"] == 1
        memory = (await client.get("/memory/long")).json()
        assert memory["story"]["slow_done"] == 1


def _interval(run: dict) -> tuple[datetime, datetime]:
    def parse(s: str) -> datetime:
        return datetime.fromisoformat(s.replace("Z", "+00:00"))

    return parse(run["started_at"]), parse(run["finished_at"])


async def test_one_story_at_a_time_across_worker_processes(client: httpx.AsyncClient, processes: Processes) -> None:
    processes.worker()
    processes.worker()
    same = [await submit(client, flow="slow", input="sleep=0.3", story_id="shared") for _ in range(4)]
    runs = [await until_status(client, job_id, "complete", "failed") for job_id in same]
    assert [run["status"] for run in runs] == ["complete"] * 4
    assert all(run["attempts"] == 1 for run in runs)
    for (_, end), (start, _) in pairwise(_interval(run) for run in runs):
        assert end <= start
    assert (await client.get("/memory/shared")).json()["story"]["slow_done"] == 4


async def test_a_run_that_keeps_crashing_its_worker_ends_failed(
    redis_url: str, redis: Redis, processes: Processes
) -> None:
    async for client in api_client(make_settings(redis_url, max_attempts=2)):
        job_id = await submit(client, flow="crash")
        for _ in range(4):
            worker = processes.worker(STORYFLOW_MAX_ATTEMPTS="2", STORYFLOW_LEASE_SECONDS="1")
            with contextlib.suppress(subprocess.TimeoutExpired):  # the last worker outlives the run
                await asyncio.to_thread(worker.wait, 10)
            if (await record(client, job_id))["status"] == "failed":
                break
        run = await until_status(client, job_id, "failed", timeout=15)
        assert run["error"]["type"] == "attempts_exhausted" and run["attempts"] == 2


async def test_a_blocked_event_loop_cannot_commit_twice(
    redis_url: str, redis: Redis, processes: Processes, tmp_path: Path
) -> None:
    async for client in api_client(make_settings(redis_url)):
        processes.worker(STORYFLOW_LEASE_SECONDS="1")
        processes.worker(STORYFLOW_LEASE_SECONDS="1")
        job_id = await submit(client, flow="block_once", input=f"blockonce=4:{tmp_path / 'marker'}")
        run = await until_status(client, job_id, "complete", "failed", timeout=30)
        assert run["status"] == "complete" and run["attempts"] == 2
        await asyncio.sleep(4)  # the blocked attempt wakes up and must not commit
        memory = (await client.get("/memory/story-1")).json()
        assert memory["story"]["blockonce_commits"] == 1
        assert (await record(client, job_id))["attempts"] == 2


async def test_finished_records_expire_but_memory_and_documents_stay(redis_url: str, redis: Redis) -> None:
    from tests.conftest import drain

    settings: Settings = make_settings(redis_url, result_ttl=1)
    async for client in api_client(settings):
        await client.put("/docs/prd", json={"content": "kept"})
        job_id = await submit(client)
        await drain(settings)
        assert (await record(client, job_id))["status"] == "complete"
        await asyncio.sleep(2.2)
        assert (await client.get(f"/run/{job_id}")).status_code == 404
        assert (await client.get("/memory/story-1")).status_code == 200
        assert (await client.get("/docs/prd")).status_code == 200
        assert [run["job_id"] for run in (await client.get("/runs")).json()] == []
