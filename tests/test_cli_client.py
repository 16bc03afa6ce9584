"""The client commands of the CLI, with an httpx.MockTransport standing in for the server."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from typer.testing import CliRunner, Result

from client import PollSchedule
from client.cli import ClientFactory, register

JOB = "0123456789abcdef0123456789abcdef"
Responder = Callable[[httpx.Request], httpx.Response]


def reply(status: int = 200, body: Any = None) -> Responder:
    return lambda request: httpx.Response(status, json=body)


class FakeServer:
    """Answers `METHOD /path` from a table; a list of answers is used in turn, its last one repeating."""

    def __init__(self, routes: dict[str, Responder | Sequence[Responder]]) -> None:
        self.routes = {key: list(value) if isinstance(value, Sequence) else [value] for key, value in routes.items()}
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answers = self.routes.get(f"{request.method} {request.url.path}")
        if not answers:
            return httpx.Response(404, json={"detail": "Not Found"})
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        return answer(request)

    def sent(self, method: str, path: str) -> list[httpx.Request]:
        return [r for r in self.requests if r.method == method and r.url.path == path]


def record(job_id: str = JOB, status: str = "complete", **fields: Any) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "status": status,
        "flow": "default",
        "story_id": "story-1",
        "attempts": 1,
        "enqueued_at": "2025-01-02T03:04:05Z",
        "started_at": None,
        "finished_at": None,
        "progress": {"done": [], "current": None, "total": 2},
        "result": f"result of {job_id}" if status == "complete" else None,
        "outputs": {},
        "error": None,
        **fields,
    }


def run_cli(handler: Callable[[httpx.Request], httpx.Response], *args: str, **env: str) -> Result:
    transport = httpx.MockTransport(handler)
    factory = ClientFactory(transport=transport, poll_schedule=PollSchedule(0, 0))
    app = typer.Typer()
    register(app, factory)
    return CliRunner().invoke(app, list(args), env={"STORYFLOW_URL": None, "STORYFLOW_API_KEY": None, **env})


def assert_one_error_line(result: Result, message: str) -> None:
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [f"error: {message}"]
    assert "Traceback" not in result.output


def test_submit_prints_the_job_id_and_sends_key_and_auth() -> None:
    server = FakeServer({"POST /run": reply(202, {"job_id": JOB, "status": "queued", "pending_docs": None})})
    result = run_cli(
        server, "submit", "--story", "story-1", "--flow", "story", "--idempotency-key", "k1", "--api-key", "key", "hi"
    )

    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == JOB
    (request,) = server.requests
    assert request.headers["Authorization"] == "Bearer key"
    assert request.headers["Idempotency-Key"] == "k1"
    assert json.loads(request.content) == {"story_id": "story-1", "input": "hi", "flow": "story"}


def test_url_and_api_key_come_from_the_environment() -> None:
    server = FakeServer({f"GET /run/{JOB}": reply(200, record())})
    result = run_cli(server, "status", JOB, STORYFLOW_URL="http://elsewhere:9000", STORYFLOW_API_KEY="env-key")

    assert result.exit_code == 0, result.output
    (request,) = server.requests
    assert str(request.url) == f"http://elsewhere:9000/run/{JOB}"
    assert request.headers["Authorization"] == "Bearer env-key"


def test_submit_wait_shows_progress_then_the_result() -> None:
    stream = (
        "id: 1\nevent: started\ndata: {}\n\n"
        'id: 2\nevent: node_started\ndata: {"node": "analyst"}\n\n'
        'id: 3\nevent: node_finished\ndata: {"node": "analyst"}\n\n'
        'id: 4\nevent: node_finished\ndata: {"node": "summarizer"}\n\n'
        "id: 5\nevent: complete\ndata: {}\n\n"
    )
    server = FakeServer(
        {
            "POST /run": reply(202, {"job_id": JOB, "status": "queued", "pending_docs": None}),
            f"GET /run/{JOB}/events": lambda request: httpx.Response(
                200, text=stream, headers={"content-type": "text/event-stream"}
            ),
            f"GET /run/{JOB}": reply(200, record()),
        }
    )
    result = run_cli(server, "submit", "--story", "story-1", "--wait", "hello")

    assert result.exit_code == 0, result.output
    assert result.stdout == f"result of {JOB}\n"
    assert "▶ analyst" in result.stderr
    assert "✓ analyst" in result.stderr
    assert "✓ summarizer" in result.stderr
    assert "run complete" in result.stderr


def test_submit_wait_on_a_failed_run_exits_1_with_its_error() -> None:
    failed = record(status="failed", error={"type": "LLMError", "message": "model unavailable"})
    server = FakeServer(
        {
            "POST /run": reply(202, {"job_id": JOB, "status": "queued", "pending_docs": None}),
            f"GET /run/{JOB}": reply(200, failed),
        }
    )
    result = run_cli(server, "submit", "--story", "story-1", "--wait", "hello")

    assert_one_error_line(result, f"run {JOB} failed: LLMError: model unavailable")


def test_submit_with_missing_documents_exits_1() -> None:
    pending = {"job_id": None, "status": "pending_docs", "pending_docs": ["prd", "architecture"]}
    result = run_cli(FakeServer({"POST /run": reply(200, pending)}), "submit", "-s", "s1", "-f", "story", "hi")

    assert_one_error_line(result, "flow 'story' needs documents first: prd, architecture (storyflow docs put)")


def test_status_prints_the_record_as_json() -> None:
    result = run_cli(FakeServer({f"GET /run/{JOB}": reply(200, record())}), "status", JOB)

    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert (printed["job_id"], printed["status"], printed["result"]) == (JOB, "complete", f"result of {JOB}")


def test_not_found_is_one_red_line_and_exit_1() -> None:
    result = run_cli(FakeServer({f"GET /run/{JOB}": reply(404, {"detail": "run not found"})}), "status", JOB)

    assert_one_error_line(result, "HTTP 404: run not found")


def test_validation_errors_are_one_line() -> None:
    detail = [
        {"type": "missing", "loc": ["body", "input"], "msg": "Field required"},
        {"type": "value_error", "loc": ["body", "flow"], "msg": "unknown flow 'x'; known flows: default, story"},
    ]
    result = run_cli(FakeServer({"POST /run": reply(422, {"detail": detail})}), "submit", "-s", "s1", "-f", "x", "hi")

    assert_one_error_line(
        result, "HTTP 422: body.input: Field required; body.flow: unknown flow 'x'; known flows: default, story"
    )


def test_connection_refused_is_one_line_and_exit_1() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    result = run_cli(refuse, "runs", "--url", "http://127.0.0.1:1")

    assert_one_error_line(result, "cannot reach http://127.0.0.1:1: [Errno 111] Connection refused")


def test_cancel_reports_the_new_status_or_the_conflict() -> None:
    server = FakeServer(
        {
            f"DELETE /run/{JOB}": [
                reply(200, record(status="cancelled")),
                reply(409, {"detail": "the run has already finished"}),
            ]
        }
    )
    assert run_cli(server, "cancel", JOB).stdout.strip() == f"run {JOB} cancelled"
    assert_one_error_line(run_cli(server, "cancel", JOB), "HTTP 409: the run has already finished")


def test_docs_put_get_and_ls(tmp_path: Path) -> None:
    source = tmp_path / "prd.md"
    source.write_text("# PRD\nbody\n", encoding="utf-8")
    doc = {"doc_id": "prd", "content": "# PRD\nbody\n", "updated_at": "2025-01-02T03:04:05Z"}
    server = FakeServer(
        {
            "PUT /docs/prd": reply(201, doc),
            "GET /docs/prd": reply(200, doc),
            "GET /docs": reply(200, [{"doc_id": "prd", "updated_at": "2025-01-02T03:04:05Z", "bytes": 11}]),
        }
    )
    put = run_cli(server, "docs", "put", "prd", str(source))
    got = run_cli(server, "docs", "get", "prd")
    listed = run_cli(server, "docs", "ls")

    assert put.stdout.strip() == "created document prd"
    assert json.loads(server.sent("PUT", "/docs/prd")[0].content) == {"content": "# PRD\nbody\n"}
    assert got.stdout == "# PRD\nbody\n"
    assert "prd" in listed.stdout and listed.exit_code == 0


def test_docs_put_of_a_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    server = FakeServer({})
    result = run_cli(server, "docs", "put", "prd", str(tmp_path / "absent.md"))

    assert result.exit_code == 2
    assert server.requests == []


def test_runs_prints_a_table_and_passes_filters() -> None:
    other = "f" * 32
    server = FakeServer({"GET /runs": reply(200, [record(), record(other, "queued")])})
    result = run_cli(server, "runs", "--story", "story-1", "--status", "complete", "--limit", "2")

    assert result.exit_code == 0, result.output
    assert JOB in result.stdout and other in result.stdout
    assert dict(server.requests[0].url.params) == {"story_id": "story-1", "status": "complete", "limit": "2"}


class BatchServer:
    """Queues every valid body, finishes each run on its first poll, and counts submissions."""

    def __init__(self, *, fail_polls: bool = False, reject_first: int = 0) -> None:
        self.submitted: list[dict[str, Any]] = []
        self.fail_polls = fail_polls
        self.reject_first = reject_first

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path == "/runs/batch":
            return httpx.Response(200, json=[self._answer(body) for body in json.loads(request.content)["runs"]])
        if self.fail_polls:
            return httpx.Response(500, json={"detail": "internal error"})
        job_id = request.url.path.rsplit("/", 1)[-1]
        number = int(job_id)
        status = "failed" if self.submitted[number]["input"] == "fail" else "complete"
        error = {"type": "LLMError", "message": "boom"} if status == "failed" else None
        return httpx.Response(200, json=record(job_id, status, error=error))

    def _answer(self, body: dict[str, Any]) -> dict[str, Any]:
        if "story_id" not in body:
            detail = [{"loc": ["story_id"], "msg": "Field required"}]
            return {"job_id": None, "status": "invalid", "pending_docs": None, "error": detail}
        if body.get("flow") == "story":
            return {"job_id": None, "status": "pending_docs", "pending_docs": ["prd"]}
        if self.reject_first:
            self.reject_first -= 1
            return {"job_id": None, "status": "rejected", "pending_docs": None, "error": "the queue is full"}
        self.submitted.append(body)
        return {"job_id": f"{len(self.submitted) - 1:032d}", "status": "queued", "pending_docs": None}


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def read_results(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def body(text: str, **fields: Any) -> str:
    return json.dumps({"story_id": "s1", "input": text, **fields})


def test_batch_writes_results_in_input_order(tmp_path: Path) -> None:
    source = write_lines(tmp_path / "runs.jsonl", [body("a"), body("b"), "", body("c")])
    server = BatchServer()
    result = run_cli(server, "batch", str(source))

    assert result.exit_code == 0, result.output
    results = read_results(tmp_path / "runs.jsonl.results.jsonl")
    assert [(r["line"], r["status"], r["result"]) for r in results] == [
        (1, "complete", f"result of {0:032d}"),
        (2, "complete", f"result of {1:032d}"),
        (4, "complete", f"result of {2:032d}"),
    ]
    assert len(server.submitted) == 3
    assert "3 complete, 0 failed or invalid" in result.stderr


def test_batch_exits_1_when_a_run_failed_or_was_invalid(tmp_path: Path) -> None:
    source = write_lines(
        tmp_path / "runs.jsonl",
        [body("fail"), json.dumps({"input": "no story"}), "not json", body("x", flow="story"), body("ok")],
    )
    out = tmp_path / "out.jsonl"
    result = run_cli(BatchServer(), "batch", str(source), "--out", str(out))

    assert result.exit_code == 1
    statuses = [(r["status"], (r.get("error") or {}).get("message")) for r in read_results(out)]
    assert statuses == [
        ("failed", "boom"),
        ("invalid", "story_id: Field required"),
        ("invalid", "line 3 is not valid JSON: Expecting value: line 1 column 1 (char 0)"),
        ("pending_docs", None),
        ("complete", None),
    ]


def test_batch_resume_does_not_resubmit(tmp_path: Path) -> None:
    source = write_lines(tmp_path / "runs.jsonl", [body("a"), body("b")])
    broken = BatchServer(fail_polls=True)
    first = run_cli(broken, "batch", str(source))

    assert first.exit_code == 1
    assert first.stderr.strip().splitlines()[-1] == "error: HTTP 500: internal error"
    assert first.stderr.count("error:") == 1
    assert len(broken.submitted) == 2
    assert not (tmp_path / "runs.jsonl.results.jsonl").exists()

    broken.fail_polls = False
    second = run_cli(broken, "batch", str(source))

    assert second.exit_code == 0, second.output
    assert len(broken.submitted) == 2
    assert [r["status"] for r in read_results(tmp_path / "runs.jsonl.results.jsonl")] == ["complete", "complete"]

    third = run_cli(broken, "batch", str(source))
    assert third.exit_code == 0 and len(broken.submitted) == 2


def test_batch_resubmits_only_lines_that_changed(tmp_path: Path) -> None:
    source = write_lines(tmp_path / "runs.jsonl", [body("a"), body("b")])
    server = BatchServer()
    run_cli(server, "batch", str(source))
    write_lines(source, [body("a"), body("changed")])
    result = run_cli(server, "batch", str(source))

    assert result.exit_code == 0, result.output
    assert [submitted["input"] for submitted in server.submitted] == ["a", "b", "changed"]


def test_batch_resubmits_runs_the_full_queue_rejected(tmp_path: Path) -> None:
    source = write_lines(tmp_path / "runs.jsonl", [body("a"), body("b")])
    server = BatchServer(reject_first=1)
    result = run_cli(server, "batch", str(source))

    assert result.exit_code == 0, result.output
    assert sorted(submitted["input"] for submitted in server.submitted) == ["a", "b"]
    assert [r["status"] for r in read_results(tmp_path / "runs.jsonl.results.jsonl")] == ["complete", "complete"]


@pytest.mark.timeout(60)
def test_batch_submits_in_chunks_of_at_most_1000(tmp_path: Path) -> None:
    source = write_lines(tmp_path / "runs.jsonl", [body(str(i)) for i in range(1001)])
    server = BatchServer()
    sizes: list[int] = []

    def counting(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/runs/batch":
            sizes.append(len(json.loads(request.content)["runs"]))
        return server(request)

    result = run_cli(counting, "batch", str(source))

    assert result.exit_code == 0, result.output
    assert sizes == [1000, 1]
