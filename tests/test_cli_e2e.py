"""The client commands of `storyflow` against a real API and worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from infra.embedded_redis import free_port
from tests.conftest import ROOT, Processes, wait_http_ok


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
