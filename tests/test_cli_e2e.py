"""The client commands of `storyflow` against a real API and worker."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from infra.embedded_redis import free_port
from tests.conftest import ROOT, Processes, wait_for, wait_http_ok


def storyflow(url: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STORYFLOW_URL": url, "COLUMNS": "120"}
    return subprocess.run(
        [sys.executable, "-m", "infra.cli", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


async def test_submit_wait_status_docs_and_batch(processes: Processes, tmp_path: Path) -> None:
    processes.worker(STORYFLOW_ECHO_DELAY="0.05")
    port = free_port()
    processes.api(port)
    url = f"http://127.0.0.1:{port}"
    await wait_http_ok(f"{url}/healthz")

    submitted = storyflow(url, "submit", "--story", "s1", "--wait", "Hello there")
    assert submitted.returncode == 0, submitted.stderr
    assert "[summarizer] [analyst] Hello there" in submitted.stdout
    assert "analyst" in submitted.stderr + submitted.stdout

    job_id = storyflow(url, "submit", "--story", "s1", "again").stdout.strip().splitlines()[-1]
    status = storyflow(url, "status", job_id)
    assert status.returncode == 0 and json.loads(status.stdout)["job_id"] == job_id

    pending = storyflow(url, "submit", "--story", "s2", "--flow", "story", "needs docs")
    assert pending.returncode == 1 and "prd" in pending.stdout + pending.stderr
    (tmp_path / "prd.md").write_text("the prd")
    assert storyflow(url, "docs", "put", "prd", str(tmp_path / "prd.md")).returncode == 0
    assert "the prd" in storyflow(url, "docs", "get", "prd").stdout

    runs = tmp_path / "runs.jsonl"
    lines = [{"story_id": f"b{i % 5}", "input": f"item {i}"} for i in range(20)] + [{"story_id": "bad id!"}]
    runs.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    out = tmp_path / "out.jsonl"
    batch = storyflow(url, "batch", str(runs), "--out", str(out))
    assert batch.returncode == 1, "an invalid line makes the batch exit non-zero"
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["status"] for r in results] == ["complete"] * 20 + ["invalid"]
    assert results[3]["result"] == "[summarizer] [analyst] item 3"
    again = storyflow(url, "batch", str(runs), "--out", str(out))
    assert again.returncode == 1
    job_ids = [json.loads(line)["job_id"] for line in out.read_text().splitlines()]
    assert job_ids == [r["job_id"] for r in results], "a second invocation resubmits nothing"

    missing = storyflow(url, "status", "f" * 32)
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    down = storyflow("http://127.0.0.1:1", "status", "f" * 32)
    assert down.returncode == 1 and "Traceback" not in down.stderr


async def test_flows_human_steps_retry_and_json_from_the_command_line(processes: Processes, tmp_path: Path) -> None:
    processes.worker(STORYFLOW_ECHO_DELAY="0.05")
    port = free_port()
    processes.api(port)
    url = f"http://127.0.0.1:{port}"
    await wait_http_ok(f"{url}/healthz")
    for doc_id in ("prd", "architecture"):
        (tmp_path / doc_id).write_text(f"the {doc_id}")
        assert storyflow(url, "docs", "put", doc_id, str(tmp_path / doc_id)).returncode == 0

    drawn = storyflow(url, "flows").stdout
    assert "qa (agent qa, at most 3 visits): approve -> end | revise -> dev" in drawn
    assert "po (asks a person: 'Approve the story draft?', at most 5 visits): approve -> dev | reject -> end" in drawn
    flows = json.loads(storyflow(url, "flows", "--json").stdout)
    assert {flow["name"] for flow in flows} >= {"default", "story", "story_approval"}

    paused = storyflow(url, "submit", "--story", "c1", "--flow", "story_approval", "--wait", "Saved cards")
    assert paused.returncode == 0, paused.stderr
    assert "awaits a person at 'po': Approve the story draft?" in paused.stdout
    assert "[sm] Saved cards" in paused.stderr  # the tokens as they came
    job_id = paused.stdout.split("storyflow input ")[1].split()[0]
    answered = storyflow(url, "input", job_id, "approve", "--text", "Approved.")
    assert answered.returncode == 0 and "queued" in answered.stdout
    wrong = storyflow(url, "input", job_id, "approve")
    assert wrong.returncode == 1 and len(wrong.stderr.strip().splitlines()) == 1

    runs = json.loads(storyflow(url, "runs", "--story", "c1", "--json").stdout)
    assert [run["job_id"] for run in runs] == [job_id]
    status = json.loads(storyflow(url, "status", job_id, "--json").stdout)
    assert [step["node"] for step in status["steps"]][:2] == ["sm", "po"]

    cancelled_id = storyflow(url, "submit", "--story", "c2", "--flow", "story_approval", "x").stdout.strip()
    assert storyflow(url, "cancel", cancelled_id).returncode == 0
    retried = storyflow(url, "retry", cancelled_id, "--from", "sm")
    assert retried.returncode == 0 and "queued" in retried.stdout, retried.stderr


async def _all_runs(http: httpx.AsyncClient, **params: str) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        response = await http.get("/runs", params={**params, "limit": "500", **({"cursor": cursor} if cursor else {})})
        assert response.status_code == 200, response.text
        runs.extend(response.json())
        cursor = response.headers.get("X-Next-Cursor")
        if not cursor:
            return runs


def _start_batch(url: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "STORYFLOW_URL": url, "COLUMNS": "120"}
    return subprocess.Popen(
        [sys.executable, "-m", "infra.cli", "batch", *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


async def test_batch_killed_mid_request_and_after_its_id_resumes_without_submitting_twice(
    processes: Processes, tmp_path: Path
) -> None:
    processes.worker()
    port = free_port()
    processes.api(port)
    url = f"http://127.0.0.1:{port}"
    await wait_http_ok(f"{url}/healthz")
    count = 4000
    source = tmp_path / "runs.jsonl"
    lines = [json.dumps({"story_id": f"k{i % 40}", "input": f"item {i}"}) for i in range(count)]
    source.write_text("\n".join([*lines, "{not json"]) + "\n")
    out = tmp_path / "out.jsonl"

    async with httpx.AsyncClient(base_url=url) as http:
        # 1. Killed as soon as the server has opened the batch: most likely while POST /batches is still
        # submitting its runs, before the answer (and so before the state file has the batch id).
        first = _start_batch(url, str(source), "--out", str(out))

        async def opened() -> bool:
            return bool((await http.get("/batches")).json())

        await wait_for(opened, timeout=30, interval=0.01)
        first.send_signal(signal.SIGKILL)
        first.wait()

        # 2. Killed right after it printed the batch id (the state file has it, the runs are queued).
        second = _start_batch(url, str(source), "--out", str(out))
        assert second.stdout is not None
        batch_id = await asyncio.to_thread(second.stdout.readline)
        second.send_signal(signal.SIGKILL)
        second.wait()
        batch_id = batch_id.strip()
        assert len(batch_id) == 32, batch_id

        # 3. Run to the end.
        third = storyflow(url, "batch", str(source), "--out", str(out), timeout=180)
        assert third.returncode == 1, third.stderr  # the line that is not JSON
        assert third.stdout.split() == [batch_id]
        assert f"{count} complete, 0 failed, 0 cancelled, 1 invalid" in third.stderr

        assert [b["batch_id"] for b in (await http.get("/batches")).json()] == [batch_id]
        assert len(await _all_runs(http, batch_id=batch_id)) == count
        assert len(await _all_runs(http)) == count, "no run was submitted twice"
        batch = (await http.get(f"/batches/{batch_id}")).json()
        assert batch["finished"] and batch["counts"]["complete"] == count

    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(results) == count + 1
    assert [r["result"] for r in results[:2]] == ["[summarizer] [analyst] item 0", "[summarizer] [analyst] item 1"]
    assert results[-1]["status"] == "invalid" and results[-1]["line"] == count + 1
    assert len({r["job_id"] for r in results[:count]}) == count


async def test_batch_follow_retry_and_cancel_from_the_command_line(processes: Processes, tmp_path: Path) -> None:
    processes.worker()
    port = free_port()
    processes.api(port)
    url = f"http://127.0.0.1:{port}"
    await wait_http_ok(f"{url}/healthz")
    source = tmp_path / "runs.jsonl"
    bodies = [{"story_id": f"e{i}", "input": "x", "flow": "explode"} for i in range(3)]
    bodies += [{"story_id": f"ok{i}", "input": f"fine {i}"} for i in range(2)]
    source.write_text("".join(json.dumps(b) + "\n" for b in bodies))

    submitted = storyflow(url, "batch", str(source))
    assert submitted.returncode == 1, submitted.stderr
    batch_id = submitted.stdout.strip()
    results = [json.loads(line) for line in (tmp_path / "runs.jsonl.results.jsonl").read_text().splitlines()]
    assert [r["status"] for r in results] == ["failed"] * 3 + ["complete"] * 2
    assert results[0]["error"]["message"] == "the boom agent always fails"

    retried = storyflow(url, "batch", "retry", batch_id)
    assert retried.returncode == 0, retried.stderr
    assert retried.stdout.startswith(f"batch {batch_id}: ") and "not finished" in retried.stdout
    followed = storyflow(url, "batch", "follow", batch_id)
    assert followed.returncode == 1, "its runs failed again"
    assert followed.stdout.strip() == f"batch {batch_id}: 5/5 ended (2 complete, 3 failed); finished"
    async with httpx.AsyncClient(base_url=url) as http:
        attempts = sorted(run["attempts"] for run in await _all_runs(http, batch_id=batch_id))
        assert attempts == [1, 1, 2, 2, 2]

        slow = [{"story_id": f"w{i}", "input": "sleep=30", "flow": "slow"} for i in range(4)]
        created = await http.post("/batches", json={"runs": slow})
        assert created.status_code == 201, created.text
        slow_id = created.json()["batch_id"]

    cancelled = storyflow(url, "batch", "cancel", slow_id, "--json")
    assert cancelled.returncode == 0, cancelled.stderr
    shown = json.loads(cancelled.stdout)
    assert shown["batch_id"] == slow_id and shown["finished"] is True and shown["counts"]["cancelled"] == 4
    again = storyflow(url, "batch", "follow", slow_id)
    assert again.returncode == 1 and again.stdout.strip() == f"batch {slow_id}: 4/4 ended (4 cancelled); finished"
    unknown = storyflow(url, "batch", "follow", "f" * 32)
    assert unknown.returncode == 1 and unknown.stderr.strip() == "error: HTTP 404: batch not found"
