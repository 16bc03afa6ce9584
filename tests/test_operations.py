"""Operations: metrics across processes, live workers, structured logs without secrets."""

from __future__ import annotations

import logging
import subprocess
import sys

import httpx
import orjson
import pytest
from redis.asyncio import Redis

from infra.logs import JsonFormatter
from infra.metrics import LocalMetrics, parse_field
from infra.settings import Settings
from tests.conftest import ROOT, api_client, child_env, drain, make_settings, wait_for

RUN = {"input": "Users want PDF export.", "story_id": "story-1"}


async def test_metrics_count_runs_durations_and_llm_calls(client: httpx.AsyncClient, settings: Settings) -> None:
    await client.post("/run", json=RUN)
    await client.post("/run", json={**RUN, "flow": "explode", "story_id": "s2"})
    await client.post("/run", json={**RUN, "story_id": "s3"})
    await drain(settings)
    text = (await client.get("/metrics")).text
    assert 'storyflow_runs_submitted_total{flow="default"} 2.0' in text
    assert 'storyflow_runs_finished_total{flow="default",status="complete"} 2.0' in text
    assert 'storyflow_runs_finished_total{flow="explode",status="failed"} 1.0' in text
    assert 'storyflow_run_duration_seconds_count{flow="default",status="complete"} 2.0' in text
    assert 'storyflow_node_duration_seconds_bucket{flow="default",le="+Inf",node="analyst"} 2.0' in text
    assert 'storyflow_llm_calls_total{provider="echo"} 5.0' in text  # two runs of two, and the analyst of explode
    assert "storyflow_queue_depth 0.0" in text
    assert "storyflow_workers_live 0.0" in text


async def test_metrics_see_the_queue(client: httpx.AsyncClient) -> None:
    await client.post("/run", json=RUN)
    await client.post("/run", json={**RUN, "story_id": "other"})
    assert "storyflow_queue_depth 2.0" in (await client.get("/metrics")).text


async def test_operations_routes_take_an_ops_key_not_a_tenant_key(redis_url: str, redis: Redis) -> None:
    settings = make_settings(redis_url, api_keys="acme:acme-key-1234", ops_keys="ops-key-1234,ops-key-5678")
    async for client in api_client(settings):
        for path in ("/metrics", "/workers", "/readyz"):
            assert (await client.get(path)).status_code == 401
            assert (await client.get(path, headers={"X-API-Key": "wrong-key-000"})).status_code == 401
            tenant = await client.get(path, headers={"X-API-Key": "acme-key-1234"})
            assert tenant.status_code == 403 and "STORYFLOW_OPS_KEYS" in tenant.json()["detail"]
            for ops_key in ("ops-key-1234", "ops-key-5678"):
                answer = await client.get(path, headers={"Authorization": f"Bearer {ops_key}"})
                assert answer.status_code in (200, 503), answer.text  # /readyz: 503 without a worker
        # An ops key is not a tenant: the tenant routes refuse it.
        assert (await client.get("/runs", headers={"X-API-Key": "ops-key-1234"})).status_code == 401


def test_ops_keys_are_checked_at_start(redis_url: str) -> None:
    with pytest.raises(ValueError, match="at least 8"):
        make_settings(redis_url, api_keys="acme:acme-key-1234", ops_keys="short")
    with pytest.raises(ValueError, match="must not also be a tenant"):
        make_settings(redis_url, api_keys="acme:acme-key-1234", ops_keys="acme-key-1234")


async def test_workers_lists_live_workers(client: httpx.AsyncClient, background_worker: object) -> None:
    async def listed() -> list:
        workers: list = (await client.get("/workers")).json()
        return workers

    workers = await wait_for(listed, timeout=5)
    assert len(workers) == 1
    assert {"worker_id", "host", "pid", "version", "in_flight", "runs_done"} <= set(workers[0])


def test_local_metrics_keep_cumulative_buckets() -> None:
    metrics = LocalMetrics()
    metrics.observe("d", 0.02, flow="f")
    metrics.observe("d", 3.0, flow="f")
    pending = {parse_field(k)[1].get("le"): v for k, v in metrics._pending.items() if k.startswith("d_bucket")}
    assert pending["0.025"] == 1 and pending["5"] == 2 and pending["+Inf"] == 2
    assert "0.01" not in pending


def test_json_log_lines_leave_out_uvicorns_coloured_copy_of_the_message() -> None:
    record = logging.LogRecord("uvicorn.error", logging.INFO, "", 0, "Started server process [%d]", (42,), None)
    record.color_message = "Started server process [\x1b[36m%d\x1b[0m]"
    line = orjson.loads(JsonFormatter().format(record))
    assert line["msg"] == "Started server process [42]" and "color_message" not in line
    assert "\x1b" not in JsonFormatter().format(record)


def test_json_log_lines_carry_the_run_fields() -> None:
    record = logging.LogRecord("storyflow.worker", logging.INFO, __file__, 1, "run %s", ("complete",), None)
    record.job_id, record.attempt = "abc", 2
    line = orjson.loads(JsonFormatter().format(record))
    assert line["msg"] == "run complete" and line["job_id"] == "abc" and line["attempt"] == 2
    assert line["level"] == "info" and line["ts"]


@pytest.mark.slow
async def test_worker_logs_one_json_line_per_run_event_and_no_secrets(
    client: httpx.AsyncClient, redis_url: str
) -> None:
    env = child_env(redis_url, STORYFLOW_LLM_API_KEY="sk-very-secret", STORYFLOW_API_KEYS="t:key-very-secret")
    worker = subprocess.Popen(
        [sys.executable, "-m", "infra.cli", "worker"], env=env, cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        job_id = (await client.post("/run", json=RUN)).json()["job_id"]

        async def complete() -> bool:
            return bool((await client.get(f"/run/{job_id}")).json()["status"] == "complete")

        await wait_for(complete)
    finally:
        worker.terminate()
        output = worker.communicate(timeout=15)[0].decode()
    lines = [orjson.loads(line) for line in output.splitlines() if line.startswith("{")]
    finished = [line for line in lines if line.get("msg") == "run complete"]
    assert len(finished) == 1
    assert {"job_id", "story_id", "flow", "tenant", "attempt", "duration_s"} <= set(finished[0])
    assert finished[0]["job_id"] == job_id and finished[0]["story_id"] == "story-1"
    assert "very-secret" not in output and "Users want PDF export" not in output
