"""`storyflow batch` on the batch API, and the clients' batch methods, with an httpx.MockTransport
standing in for the server (the end-to-end tests against a real API are in test_cli_e2e.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from typer.testing import CliRunner, Result

from client import PollSchedule, StoryflowClient
from client import batch as batching
from client.cli import ClientFactory, register
from client.models import Batch, BatchCounts

COUNTED = list(BatchCounts.model_fields)


class BatchesServer:
    """POST /batches with Idempotency-Keys, GET /batches/{id}, GET /runs?batch_id= (paged), DELETE and
    retry. A run completes (or fails, if its input is "fail") after `polls` GETs of its batch."""

    def __init__(self, *, polls: int = 1, reject_first: int = 0, page: int = 3) -> None:
        self.polls = polls
        self.reject_first = reject_first
        self.page = page
        self.keys: dict[str, tuple[str, str]] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.runs: dict[str, dict[str, Any]] = {}  # job id -> {body, status, batch_id}
        self.requests: list[httpx.Request] = []
        self.fail: dict[str, int] = {}  # "METHOD /path-prefix" -> how many more times to fail
        self.fail_with: Exception | int = 500

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        route = f"{request.method} {request.url.path}"
        for prefix, left in self.fail.items():
            if left and route.startswith(prefix):
                self.fail[prefix] = left - 1
                if isinstance(self.fail_with, Exception):
                    self._serve(request)  # the server did its work; the answer is lost
                    raise self.fail_with
                return httpx.Response(self.fail_with, json={"detail": "internal error"})
        return self._serve(request)

    def posts(self) -> list[httpx.Request]:
        return [r for r in self.requests if r.method == "POST" and r.url.path == "/batches"]

    def _serve(self, request: httpx.Request) -> httpx.Response:
        parts = request.url.path.strip("/").split("/")
        if request.method == "POST" and parts == ["batches"]:
            return self._create(request)
        if request.method == "GET" and parts == ["batches"]:
            return httpx.Response(200, json=[self._batch(batch_id) for batch_id in reversed(self.batches)])
        if request.method == "GET" and parts == ["runs"]:
            return self._list_runs(request)
        if parts[0] != "batches" or len(parts) < 2 or parts[1] not in self.batches:
            return httpx.Response(404, json={"detail": "batch not found"})
        batch_id = parts[1]
        if request.method == "GET":
            self._advance(batch_id)
        elif request.method == "DELETE":
            self._set(batch_id, ("queued", "in_progress"), "cancelled")
        elif request.method == "POST" and parts[2:] == ["retry"]:
            self._set(batch_id, ("failed", "cancelled"), "queued")
        return httpx.Response(200, json=self._batch(batch_id))

    def _create(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        digest = json.dumps(body, sort_keys=True)
        key = request.headers.get("Idempotency-Key")
        status = 201
        if key in self.keys:
            batch_id, first = self.keys[key]
            if first != digest:
                return httpx.Response(422, json={"detail": "this Idempotency-Key was used with a different batch"})
            status = 200
        else:
            batch_id = f"{len(self.batches):032x}"
            self.batches[batch_id] = {"total": len(body["runs"]), "items": [], "polls": 0}
            if key:
                self.keys[key] = (batch_id, digest)
        items = [self._submit(batch_id, position, run) for position, run in enumerate(body["runs"])]
        self.batches[batch_id]["items"] = items
        return httpx.Response(status, json={"batch_id": batch_id, "items": items})

    def _submit(self, batch_id: str, position: int, run: dict[str, Any]) -> dict[str, Any]:
        job_id = f"{int(batch_id, 16):016x}{position:016x}"
        if job_id in self.runs:
            return {"job_id": job_id, "status": "queued", "pending_docs": None}
        if "story_id" not in run:
            return {"job_id": None, "status": "invalid", "pending_docs": None, "error": "story_id: Field required"}
        if run.get("flow") == "story":
            return {"job_id": None, "status": "pending_docs", "pending_docs": ["prd"]}
        if self.reject_first:
            self.reject_first -= 1
            return {"job_id": None, "status": "rejected", "pending_docs": None, "error": "queue_full"}
        self.runs[job_id] = {"body": run, "status": "queued", "batch_id": batch_id, "polls": 0}
        return {"job_id": job_id, "status": "queued", "pending_docs": None}

    def _advance(self, batch_id: str) -> None:
        for run in self._runs_of(batch_id):
            run["polls"] += 1
            if run["status"] in ("queued", "in_progress") and run["polls"] >= self.polls:
                run["status"] = "failed" if run["body"].get("input") == "fail" else "complete"

    def _set(self, batch_id: str, before: tuple[str, ...], after: str) -> None:
        for run in self._runs_of(batch_id):
            if run["status"] in before:
                run["status"], run["polls"] = after, 0

    def _runs_of(self, batch_id: str) -> list[dict[str, Any]]:
        return [run for run in self.runs.values() if run["batch_id"] == batch_id]

    def _batch(self, batch_id: str) -> dict[str, Any]:
        counts = dict.fromkeys(COUNTED, 0)
        for run in self._runs_of(batch_id):
            counts[run["status"]] += 1
        for item in self.batches[batch_id]["items"]:
            if item["status"] != "queued":
                counts[item["status"]] += 1
        unfinished = counts["queued"] + counts["in_progress"] + counts["awaiting_input"]
        return {
            "batch_id": batch_id,
            "created_at": "2026-11-25T07:00:00Z",
            "total": self.batches[batch_id]["total"],
            "counts": counts,
            "finished": unfinished == 0,
            "webhook": None,
        }

    def _list_runs(self, request: httpx.Request) -> httpx.Response:
        batch_id = request.url.params["batch_id"]
        limit = int(request.url.params.get("limit", "50"))
        ids = [job_id for job_id, run in self.runs.items() if run["batch_id"] == batch_id]
        start = int(request.url.params.get("cursor", "0"))
        size = min(limit, self.page)
        page = ids[start : start + size]
        records = [self._record(job_id) for job_id in page]
        headers = {"X-Next-Cursor": str(start + size)} if start + size < len(ids) else {}
        return httpx.Response(200, json=records, headers=headers)

    def _record(self, job_id: str) -> dict[str, Any]:
        run = self.runs[job_id]
        status = run["status"]
        return {
            "job_id": job_id,
            "status": status,
            "flow": run["body"].get("flow", "default"),
            "story_id": run["body"]["story_id"],
            "result": f"done: {run['body'].get('input')}" if status == "complete" else None,
            "error": {"type": "LLMError", "message": "boom"} if status == "failed" else None,
        }


def factory(server: BatchesServer) -> ClientFactory:
    return ClientFactory(transport=httpx.MockTransport(server), poll_schedule=PollSchedule(0, 0))


def run_cli(server: BatchesServer, *args: str) -> Result:
    app = typer.Typer()
    register(app, factory(server))
    return CliRunner().invoke(app, list(args), env={"STORYFLOW_URL": None, "STORYFLOW_API_KEY": None, "COLUMNS": "200"})


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def read_results(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def body(text: str, **fields: Any) -> str:
    return json.dumps({"story_id": "s1", "input": text, **fields})


def test_a_file_becomes_one_batch_and_its_results_come_in_input_order(tmp_path: Path) -> None:
    source = write_lines(tmp_path / "runs.jsonl", [*map(body, "012"), "", *map(body, "defg")])
    server = BatchesServer(polls=2)
    result = run_cli(server, "batch", str(source))

    assert result.exit_code == 0, result.output
    [batch_id] = server.batches
    assert result.stdout.splitlines() == [batch_id], "the batch id alone on stdout"
    assert len(server.posts()) == 1
    assert server.posts()[0].headers["Idempotency-Key"] == batching.idempotency_key(batching.file_digest(source), 0)
    results = read_results(tmp_path / "runs.jsonl.results.jsonl")
    assert [(r["line"], r["status"], r["result"]) for r in results] == [
        (1, "complete", "done: 0"),
        (2, "complete", "done: 1"),
        (3, "complete", "done: 2"),
        *((n, "complete", f"done: {text}") for n, text in zip(range(5, 9), "defg", strict=True)),
    ]
    assert "7 complete, 0 failed" in result.stderr
    runs_requests = [r for r in server.requests if r.url.path == "/runs"]
    assert len(runs_requests) == 3, "7 runs read in pages of 3"
    assert all(r.url.params["batch_id"] == batch_id for r in runs_requests)


def test_failed_invalid_unparseable_and_pending_docs_lines(tmp_path: Path) -> None:
    source = write_lines(
        tmp_path / "runs.jsonl",
        [body("fail"), json.dumps({"input": "no story"}), "not json", "[1]", body("x", flow="story"), body("ok")],
    )
    out = tmp_path / "out.jsonl"
    server = BatchesServer()
    result = run_cli(server, "batch", str(source), "--out", str(out))

    assert result.exit_code == 1
    assert len(json.loads(server.posts()[0].content)["runs"]) == 4, "unparseable lines are not sent"
    statuses = [(r["status"], (r.get("error") or {}).get("message")) for r in read_results(out)]
    assert statuses == [
        ("failed", "boom"),
        ("invalid", "story_id: Field required"),
        ("invalid", "line 3 is not valid JSON: Expecting value: line 1 column 1 (char 0)"),
        ("invalid", "line 4 is not a JSON object"),
        ("pending_docs", None),
        ("complete", None),
    ]
    assert "1 complete, 1 failed, 0 cancelled, 3 invalid, 0 rejected, 1 pending docs" in result.stderr


def test_after_a_crash_past_the_state_write_nothing_is_posted_again(tmp_path: Path) -> None:
    source = write_lines(tmp_path / "runs.jsonl", [body("a"), body("b")])
    server = BatchesServer(polls=1)
    server.fail = {"GET /batches/": 1}
    first = run_cli(server, "batch", str(source))

    assert first.exit_code == 1 and first.stderr.strip().splitlines()[-1] == "error: HTTP 500: internal error"
    [batch_id] = server.batches
    assert first.stdout.splitlines() == [batch_id], "printed before following"
    state = json.loads((tmp_path / "runs.jsonl.state.json").read_text())
    assert [entry["batch_id"] for entry in state["batches"]] == [batch_id]
    assert not (tmp_path / "runs.jsonl.results.jsonl").exists()

    second = run_cli(server, "batch", str(source))
    assert second.exit_code == 0, second.output
    assert second.stdout.splitlines() == [batch_id]
    assert len(server.posts()) == 1, "resumed from the state file"
    assert len(server.runs) == 2
    assert [r["status"] for r in read_results(tmp_path / "runs.jsonl.results.jsonl")] == ["complete", "complete"]


def test_after_a_crash_before_the_state_write_the_same_key_finds_the_batch(tmp_path: Path) -> None:
    source = write_lines(tmp_path / "runs.jsonl", [body("a"), body("b"), body("c")])
    server = BatchesServer()
    # The server takes the batch but the answer never arrives (the process died mid-request).
    server.fail, server.fail_with = {"POST /batches": batching.SUBMIT_ATTEMPTS}, httpx.ReadError("gone")
    first = run_cli(server, "batch", str(source))
    assert first.exit_code == 1 and first.stdout == ""
    assert json.loads((tmp_path / "runs.jsonl.state.json").read_text())["batches"] == []

    second = run_cli(server, "batch", str(source))
    assert second.exit_code == 0, second.output
    assert len(server.batches) == 1 and len(server.runs) == 3, "no run submitted twice"
    assert len({r.headers["Idempotency-Key"] for r in server.posts()}) == 1


def test_a_lost_answer_is_retried_with_the_same_key(tmp_path: Path) -> None:
    source = write_lines(tmp_path / "runs.jsonl", [body("a")])
    server = BatchesServer()
    server.fail, server.fail_with = {"POST /batches": 1}, httpx.ReadError("gone")
    result = run_cli(server, "batch", str(source))
    assert result.exit_code == 0, result.output
    assert len(server.posts()) == 2 and len(server.batches) == 1 and len(server.runs) == 1


@pytest.mark.timeout(60)
def test_more_than_10000_lines_make_several_batches(tmp_path: Path) -> None:
    source = write_lines(tmp_path / "runs.jsonl", [body(str(i)) for i in range(10001)])
    server = BatchesServer(page=500)
    result = run_cli(server, "batch", str(source))

    assert result.exit_code == 0, result.output
    sizes = [len(json.loads(r.content)["runs"]) for r in server.posts()]
    assert sizes == [10000, 1]
    assert len({r.headers["Idempotency-Key"] for r in server.posts()}) == 2
    assert result.stdout.splitlines() == list(server.batches)
    results = read_results(tmp_path / "runs.jsonl.results.jsonl")
    assert [r["result"] for r in results[9999:]] == ["done: 9999", "done: 10000"]


def test_rejected_runs_are_sent_again_with_the_same_key(tmp_path: Path) -> None:
    source = write_lines(tmp_path / "runs.jsonl", [body("a"), body("b")])
    server = BatchesServer(reject_first=1)
    result = run_cli(server, "batch", str(source))

    assert result.exit_code == 0, result.output
    assert len(server.batches) == 1 and len(server.runs) == 2
    assert len({r.headers["Idempotency-Key"] for r in server.posts()}) == 1
    assert [r["status"] for r in read_results(tmp_path / "runs.jsonl.results.jsonl")] == ["complete", "complete"]


def test_runs_that_stay_rejected_are_reported(tmp_path: Path) -> None:
    source = write_lines(tmp_path / "runs.jsonl", [body("a")])
    server = BatchesServer(reject_first=10**6)
    result = run_cli(server, "batch", str(source))
    assert result.exit_code == 1
    assert len(server.posts()) == 1 + batching.MAX_REFUSED_ROUNDS
    [line] = read_results(tmp_path / "runs.jsonl.results.jsonl")
    assert line["status"] == "rejected" and line["error"]["message"] == "queue_full"


def test_a_changed_file_is_refused_and_restart_makes_new_batches(tmp_path: Path) -> None:
    source = write_lines(tmp_path / "runs.jsonl", [body("a")])
    server = BatchesServer()
    assert run_cli(server, "batch", str(source)).exit_code == 0
    write_lines(source, [body("a"), body("b")])
    refused = run_cli(server, "batch", str(source))
    assert refused.exit_code == 1 and "--restart" in refused.stderr
    assert len(server.posts()) == 1

    restarted = run_cli(server, "batch", str(source), "--restart")
    assert restarted.exit_code == 0, restarted.output
    assert len(server.batches) == 2
    again = run_cli(server, "batch", str(source), "--restart")
    assert again.exit_code == 0 and len(server.batches) == 3, "each --restart is a new submission"


def test_an_unreadable_state_file_is_one_error_line(tmp_path: Path) -> None:
    source = write_lines(tmp_path / "runs.jsonl", [body("a")])
    (tmp_path / "runs.jsonl.state.json").write_text("{not json")
    result = run_cli(BatchesServer(), "batch", str(source))
    assert result.exit_code == 1 and "unreadable" in result.stderr and "Traceback" not in result.output


def test_follow_retry_and_cancel_a_batch(tmp_path: Path) -> None:
    server = BatchesServer(polls=3)
    source = write_lines(tmp_path / "runs.jsonl", [body("fail"), body("ok")])
    server.fail = {"GET /batches/": 1}
    assert run_cli(server, "batch", str(source)).exit_code == 1  # submitted, not followed
    [batch_id] = server.batches

    followed = run_cli(server, "batch", "follow", batch_id)
    assert followed.exit_code == 1, "a run failed"
    assert followed.stdout.strip() == f"batch {batch_id}: 2/2 ended (1 complete, 1 failed); finished"

    retried = run_cli(server, "batch", "retry", batch_id)
    assert retried.exit_code == 0, retried.output
    assert retried.stdout.strip() == f"batch {batch_id}: 1/2 ended (1 complete), 1 queued; not finished"

    cancelled = run_cli(server, "batch", "cancel", batch_id, "--json")
    assert cancelled.exit_code == 0, cancelled.output
    shown = json.loads(cancelled.stdout)
    assert shown["batch_id"] == batch_id and shown["counts"]["cancelled"] == 1 and shown["finished"] is True
    assert [r.method for r in server.requests[-1:]] == ["DELETE"]


def test_batch_usage_errors(tmp_path: Path) -> None:
    server = BatchesServer()
    unknown = run_cli(server, "batch", "frobnicate", "0" * 32)
    assert unknown.exit_code == 2 and "follow, retry, cancel" in unknown.output
    missing = run_cli(server, "batch", str(tmp_path / "nope.jsonl"))
    assert missing.exit_code == 2 and "no such file" in missing.output
    action_alone = run_cli(server, "batch", "retry")
    assert action_alone.exit_code == 2 and "storyflow batch retry BATCH_ID" in action_alone.output
    not_found = run_cli(server, "batch", "follow", "f" * 32)
    assert not_found.exit_code == 1 and not_found.stderr.strip() == "error: HTTP 404: batch not found"
    assert server.requests and all(r.url.path != "/batches" for r in server.requests)


def test_the_sync_face_speaks_the_batch_api() -> None:
    server = BatchesServer(page=2)
    with StoryflowClient("http://storyflow", transport=httpx.MockTransport(server)) as client:
        runs = [{"story_id": "s1", "input": str(i)} for i in range(5)] + [{"input": "no story"}]
        created = client.create_batch(runs, webhook="https://example.com/hook", idempotency_key="k1")
        assert created.created and len(created.items) == 6 and created.items[-1].status == "invalid"
        assert json.loads(server.posts()[0].content)["webhook"] == "https://example.com/hook"
        assert client.create_batch(runs, webhook="https://example.com/hook", idempotency_key="k1").created is False
        assert client.get_batch(created.batch_id).counts.complete == 5
        assert [batch.batch_id for batch in client.list_batches(limit=5)] == [created.batch_id]
        assert len(client.runs(batch_id=created.batch_id)) == 5
        page, cursor = client.runs_page(batch_id=created.batch_id, limit=2)
        assert len(page) == 2 and cursor == "2"
        assert client.retry_batch(created.batch_id).counts.queued == 0
        assert client.cancel_batch(created.batch_id).finished
    listed = [r for r in server.requests if r.url.path == "/batches" and r.method == "GET"]
    assert dict(listed[0].url.params) == {"limit": "5"}


def test_tally_adds_the_unparseable_lines_and_knows_when_nothing_moves() -> None:
    lines = [batching.InputLine(1, {"story_id": "s"}), batching.InputLine(2, None, "bad")]
    counts = BatchCounts(queued=1)
    batch = Batch(batch_id="b", total=1, counts=counts)
    moving = batching.tally(lines, [batch])
    assert (moving.total, moving.counts.invalid, moving.ended, moving.settled) == (2, 1, 1, False)
    waiting = batching.tally(lines, [batch.model_copy(update={"counts": BatchCounts(awaiting_input=1)})])
    assert waiting.settled and waiting.ended == 1


def test_idempotency_keys_depend_on_the_content_the_chunk_and_the_salt() -> None:
    key = batching.idempotency_key("d" * 64, 0)
    assert key == batching.idempotency_key("d" * 64, 0)
    assert len({key, batching.idempotency_key("d" * 64, 1), batching.idempotency_key("e" * 64, 0)}) == 3
    assert key != batching.idempotency_key("d" * 64, 0, "salt")
    lines = [batching.InputLine(n, {"n": n} if n % 3 else None) for n in range(1, 8)]
    assert [[line.number for line in chunk] for chunk in batching.chunks(lines, 2)] == [[1, 2], [4, 5], [7]]


def test_an_empty_file_submits_nothing(tmp_path: Path) -> None:
    source = write_lines(tmp_path / "runs.jsonl", ["", "  "])
    server = BatchesServer()
    result = run_cli(server, "batch", str(source))
    assert result.exit_code == 0, result.output
    assert server.requests == [] and read_results(tmp_path / "runs.jsonl.results.jsonl") == []


def test_a_state_file_of_the_per_run_batch_command_is_refused(tmp_path: Path) -> None:
    source = write_lines(tmp_path / "runs.jsonl", [body("a")])
    (tmp_path / "runs.jsonl.state.json").write_text(json.dumps({"version": 1, "lines": {}}))
    server = BatchesServer()
    result = run_cli(server, "batch", str(source))
    assert result.exit_code == 1 and "another storyflow version; pass --restart" in result.stderr
    assert server.requests == []
