"""A worker told to stop ends within its grace, whatever Redis does (real processes, real signals)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis

from infra import keys
from infra.embedded_redis import EmbeddedRedis
from tests.conftest import ROOT, Processes, api_client, child_env, make_settings, until_status, wait_for

pytestmark = [pytest.mark.timeout(90)]
GRACE_S = 2.0
CLOSE_BUDGET_S = 2.0  # worker/main.py
SLACK_S = 3.0  # interpreter exit, a loaded CI machine


async def exited_within(process: object, seconds: float) -> float:
    started = time.monotonic()
    code = await asyncio.to_thread(process.wait, seconds)  # type: ignore[attr-defined]
    assert code is not None
    return time.monotonic() - started


async def test_an_idle_worker_stops_within_its_grace_with_redis_gone(own_redis: EmbeddedRedis) -> None:
    processes = Processes(own_redis.url)
    try:
        worker = processes.worker(STORYFLOW_SHUTDOWN_GRACE=str(GRACE_S))
        redis = Redis.from_url(own_redis.url)

        async def registered() -> bool:
            return bool(await redis.zcard(keys.WORKERS_SEEN))

        await wait_for(registered, timeout=20)
        await redis.aclose()
        own_redis.kill()
        worker.send_signal(signal.SIGTERM)
        took = await exited_within(worker, GRACE_S + CLOSE_BUDGET_S + SLACK_S + 10)
        assert took < GRACE_S + CLOSE_BUDGET_S + SLACK_S, took
    finally:
        processes.stop_all()


async def test_a_busy_worker_stops_within_its_grace_and_its_run_is_recovered(own_redis: EmbeddedRedis) -> None:
    processes = Processes(own_redis.url)
    try:
        worker = processes.worker(STORYFLOW_SHUTDOWN_GRACE=str(GRACE_S), STORYFLOW_ECHO_DELAY="5")
        async for client in api_client(make_settings(own_redis.url)):
            job_id = (await client.post("/run", json={"story_id": "s1", "input": "x"})).json()["job_id"]
            await until_status(client, job_id, "in_progress")
        own_redis.kill()
        worker.send_signal(signal.SIGTERM)
        took = await exited_within(worker, GRACE_S + CLOSE_BUDGET_S + SLACK_S + 10)
        assert took < GRACE_S + CLOSE_BUDGET_S + SLACK_S, took
        own_redis.start()
        processes.worker(STORYFLOW_ECHO_DELAY="0.1")
        async for client in api_client(make_settings(own_redis.url)):
            run = await until_status(client, job_id, "complete", "failed", timeout=30)
            assert run["status"] == "complete", run
            memory = (await client.get("/memory/s1")).json()
            assert memory["agents"]["analyst"]["runs"] == 1  # committed once
    finally:
        processes.stop_all()


async def test_a_job_aborted_before_it_starts_logs_no_traceback(redis_url: str, redis: Redis, tmp_path: Path) -> None:
    """A run cancelled while its job waits in arq's queue after a hand-back: arq drops the job at its
    next pick ("aborted before start") and writes its "result", a CancelledError, as text."""
    log = tmp_path / "worker.log"
    processes = Processes(redis_url)
    try:
        async for client in api_client(make_settings(redis_url)):
            job_id = (await client.post("/run", json={"story_id": "s1", "input": "x"})).json()["job_id"]
            # As if an attempt had just been handed back: the record says running, the job is queued.
            await redis.hset(keys.run("default", job_id), "status", '"in_progress"')
            assert (await client.delete(f"/run/{job_id}")).status_code == 200
            assert await redis.zscore(keys.ARQ_ABORT_SET, job_id) is not None
            with log.open("w") as sink:
                worker = subprocess.Popen(
                    [sys.executable, "-m", "infra.cli", "worker"], env=child_env(redis_url), cwd=ROOT,
                    stdout=sink, stderr=subprocess.STDOUT,
                )  # fmt: skip
                processes.started.append(worker)

                async def dropped(job_id: str = job_id) -> bool:
                    return not await redis.zscore(keys.ARQ_QUEUE, job_id) and not await redis.exists(
                        keys.arq_job(job_id)
                    )

                await wait_for(dropped, timeout=20)
            assert (await client.get(f"/run/{job_id}")).json()["status"] == "cancelled"
        processes.stop_all()
        output = log.read_text()
        assert "Traceback" not in output and "error serializing" not in output, output[-2000:]
    finally:
        processes.stop_all()
