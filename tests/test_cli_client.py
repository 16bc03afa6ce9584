"""The client commands of the CLI, with an httpx.MockTransport standing in for the server."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
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
