"""The typed clients against an httpx.MockTransport standing in for the server."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import httpx
import pytest

from client import (
    AsyncStoryflowClient,
    BatchInvalid,
    BatchRejected,
    PendingDocs,
    PollSchedule,
    RunAccepted,
    RunEvent,
    RunRecord,
    StoryflowClient,
    StoryflowError,
    WaitTimeout,
)
from client.detail import describe_detail

JOB = "0123456789abcdef0123456789abcdef"
NO_DELAY = PollSchedule(first_delay=0, max_delay=0)
Responder = Callable[[httpx.Request], httpx.Response]


def reply(
    status: int = 200,
    body: Any = None,
    *,
    text: str | None = None,
    headers: dict[str, str] | None = None,
) -> Responder:
    def respond(request: httpx.Request) -> httpx.Response:
        if text is not None:
            return httpx.Response(status, text=text, headers=headers)
        return httpx.Response(status, json=body, headers=headers)

    return respond


def sse(*events: tuple[str, str, dict[str, Any]], keepalive: str = "") -> Responder:
    lines = [f"id: {event_id}\nevent: {name}\ndata: {json.dumps(data)}\n\n" for event_id, name, data in events]
    payload = ("".join(lines) + keepalive).encode()

    def respond(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=payload, headers={"content-type": "text/event-stream"})

    return respond


def refuse_connection(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("Connection refused", request=request)


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


def record(status: str = "complete", **fields: Any) -> dict[str, Any]:
    finished = status in {"complete", "failed", "cancelled"}
    return {
        "job_id": JOB,
        "status": status,
        "flow": "default",
        "story_id": "story-1",
        "attempts": 1,
        "enqueued_at": "2025-01-02T03:04:05Z",
        "started_at": "2025-01-02T03:04:06Z" if status != "queued" else None,
        "finished_at": "2025-01-02T03:04:07Z" if finished else None,
        "progress": {"done": ["analyst", "summarizer"] if finished else [], "current": None, "total": 2},
        "result": "summary" if status == "complete" else None,
        "outputs": {"analyst": "a", "summarizer": "summary"} if status == "complete" else {},
        "error": None,
        **fields,
    }


VALIDATION_DETAIL = [
    {
        "type": "string_pattern_mismatch",
        "loc": ["body", "story_id"],
        "msg": "String should match pattern",
        "input": "!",
    },
    {"type": "missing", "loc": ["body", "input"], "msg": "Field required", "input": {}},
]
ACCEPTED = {"job_id": JOB, "status": "queued", "pending_docs": None}


def make_client(server: FakeServer, api_key: str | None = "secret") -> StoryflowClient:
    return StoryflowClient("http://sf.test", api_key, transport=httpx.MockTransport(server), poll_schedule=NO_DELAY)


def make_async_client(server: FakeServer, api_key: str | None = "secret") -> AsyncStoryflowClient:
    return AsyncStoryflowClient(
        "http://sf.test", api_key, transport=httpx.MockTransport(server), poll_schedule=NO_DELAY
    )


def test_submit_sends_body_auth_idempotency_key_and_wait() -> None:
    server = FakeServer({"POST /run": reply(202, ACCEPTED, headers={"Location": f"/run/{JOB}"})})
    with make_client(server) as client:
        answer = client.submit("story-1", "hello", "story", idempotency_key="k-1", wait=5)

    assert answer == RunAccepted(job_id=JOB, status="queued")
    (request,) = server.requests
    assert request.method == "POST"
    assert request.url.path == "/run"
    assert request.url.params["wait"] == "5"
    assert request.headers["Authorization"] == "Bearer secret"
    assert request.headers["Idempotency-Key"] == "k-1"
    assert json.loads(request.content) == {"story_id": "story-1", "input": "hello", "flow": "story"}


def test_submit_without_options_sends_no_optional_headers_or_query() -> None:
    server = FakeServer({"POST /run": reply(202, ACCEPTED)})
    with make_client(server, api_key=None) as client:
        client.submit("story-1", "hello")

    (request,) = server.requests
    assert "Authorization" not in request.headers
    assert "Idempotency-Key" not in request.headers
    assert "wait" not in request.url.params
    assert json.loads(request.content)["flow"] == "default"


def test_submit_parses_pending_docs() -> None:
    body = {"job_id": None, "status": "pending_docs", "pending_docs": ["prd", "architecture"]}
    server = FakeServer({"POST /run": reply(200, body)})
    with make_client(server) as client:
        answer = client.submit("story-1", "hello", "story")

    assert isinstance(answer, PendingDocs)
    assert answer.pending_docs == ["prd", "architecture"]


def test_submit_with_wait_parses_the_finished_record() -> None:
    server = FakeServer({"POST /run": reply(200, record("complete"))})
    with make_client(server) as client:
        answer = client.submit("story-1", "hello", wait=30)

    assert isinstance(answer, RunRecord)
    assert answer.is_finished
    assert answer.result == "summary"
    assert answer.progress.done == ["analyst", "summarizer"]
    assert answer.finished_at == datetime.fromisoformat("2025-01-02T03:04:07+00:00")


def test_get_parses_a_failed_record_with_its_error() -> None:
    failed = record("failed", error={"type": "LLMError", "message": "boom"})
    server = FakeServer({f"GET /run/{JOB}": reply(200, failed)})
    with make_client(server) as client:
        run = client.get(JOB)

    assert run.status == "failed"
    assert run.error is not None
    assert (run.error.type, run.error.message) == ("LLMError", "boom")
    assert run.result is None


def test_cancel_uses_delete_and_reports_a_conflict() -> None:
    server = FakeServer(
        {
            f"DELETE /run/{JOB}": [
                reply(200, record("cancelled")),
                reply(409, {"detail": "the run has already finished"}),
            ]
        }
    )
    with make_client(server) as client:
        assert client.cancel(JOB).status == "cancelled"
        with pytest.raises(StoryflowError) as raised:
            client.cancel(JOB)

    assert raised.value.status_code == 409
    assert str(raised.value) == "HTTP 409: the run has already finished"


def test_validation_error_list_becomes_one_readable_line() -> None:
    server = FakeServer({"POST /run": reply(422, {"detail": VALIDATION_DETAIL})})
    with make_client(server) as client, pytest.raises(StoryflowError) as raised:
        client.submit("!", "")

    assert raised.value.status_code == 422
    assert raised.value.message == "body.story_id: String should match pattern; body.input: Field required"
    assert str(raised.value) == f"HTTP 422: {raised.value.message}"


def test_string_detail_is_the_message() -> None:
    server = FakeServer({f"GET /run/{JOB}": reply(404, {"detail": "run not found"})})
    with make_client(server) as client, pytest.raises(StoryflowError) as raised:
        client.get(JOB)

    assert (raised.value.status_code, raised.value.message) == (404, "run not found")


def test_unavailable_carries_retry_after() -> None:
    server = FakeServer({"GET /flows": reply(503, {"detail": "storage is unavailable"}, headers={"Retry-After": "2"})})
    with make_client(server) as client, pytest.raises(StoryflowError) as raised:
        client.flows()

    assert raised.value.retry_after == 2.0
    assert str(raised.value) == "HTTP 503: storage is unavailable"


def test_non_json_error_body_is_shown_as_text() -> None:
    server = FakeServer({"GET /flows": reply(502, text="<html>\n Bad   Gateway\n</html>")})
    with make_client(server) as client, pytest.raises(StoryflowError) as raised:
        client.flows()

    assert str(raised.value) == "HTTP 502: <html> Bad Gateway </html>"


def test_connection_failure_is_a_storyflow_error_without_status() -> None:
    transport = httpx.MockTransport(refuse_connection)
    with StoryflowClient("http://sf.test", transport=transport) as client, pytest.raises(StoryflowError) as raised:
        client.get(JOB)

    assert raised.value.status_code is None
    assert str(raised.value) == "cannot reach http://sf.test: Connection refused"


def test_unexpected_success_body_is_reported_not_crashed_on() -> None:
    server = FakeServer({f"GET /run/{JOB}": reply(200, {"job_id": JOB, "status": "exploded"})})
    with make_client(server) as client, pytest.raises(StoryflowError) as raised:
        client.get(JOB)

    assert raised.value.message.startswith(f"unexpected answer to GET /run/{JOB}: status:")


@pytest.mark.parametrize(
    ("detail", "expected"),
    [
        ("multi\nline  message", "multi line message"),
        (
            {"message": "unknown flow", "known_flows": ["default", "story"]},
            "unknown flow (known_flows: default, story)",
        ),
        ([{"loc": [], "msg": "bad"}], "bad"),
        (None, "no details"),
    ],
)
def test_describe_detail_shapes(detail: Any, expected: str) -> None:
    assert describe_detail(detail) == expected


def test_list_runs_passes_only_given_filters() -> None:
    server = FakeServer({"GET /runs": reply(200, [record("complete"), record("queued")])})
    with make_client(server) as client:
        runs = client.list_runs(story_id="story-1", limit=5)

    assert [run.status for run in runs] == ["complete", "queued"]
    assert dict(server.requests[0].url.params) == {"story_id": "story-1", "limit": "5"}


def test_documents_round_trip() -> None:
    doc = {"doc_id": "prd", "content": "# PRD", "updated_at": "2025-01-02T03:04:05Z"}
    server = FakeServer(
        {
            "PUT /docs/prd": [reply(201, doc), reply(200, doc)],
            "GET /docs/prd": reply(200, doc),
            "GET /docs": reply(200, [{"doc_id": "prd", "updated_at": "2025-01-02T03:04:05Z", "bytes": 5}]),
            "DELETE /docs/prd": reply(204),
        }
    )
    with make_client(server) as client:
        assert client.put_doc("prd", "# PRD").created is True
        assert client.put_doc("prd", "# PRD").created is False
        assert client.get_doc("prd").content == "# PRD"
        (listed,) = client.list_docs()
        client.delete_doc("prd")

    assert (listed.doc_id, listed.bytes) == ("prd", 5)
    assert json.loads(server.sent("PUT", "/docs/prd")[0].content) == {"content": "# PRD"}
    assert len(server.sent("DELETE", "/docs/prd")) == 1


def test_flows_are_parsed() -> None:
    flows = [
        {"name": "default", "agents": ["analyst", "summarizer"], "requires_docs": []},
        {"name": "story", "agents": ["sm", "dev", "qa"], "requires_docs": ["prd", "architecture"]},
    ]
    with make_client(FakeServer({"GET /flows": reply(200, flows)})) as client:
        parsed = client.flows()

    assert [(flow.name, flow.requires_docs) for flow in parsed] == [("default", []), ("story", ["prd", "architecture"])]


def test_batch_sends_runs_and_parses_every_item_kind() -> None:
    items = [
        ACCEPTED,
        {"job_id": None, "status": "pending_docs", "pending_docs": ["prd"]},
        {"job_id": None, "status": "invalid", "pending_docs": None, "error": VALIDATION_DETAIL[:1]},
        {"job_id": None, "status": "rejected", "pending_docs": None, "error": "the queue is full"},
    ]
    runs = [{"story_id": f"s{i}", "input": "x"} for i in range(4)]
    server = FakeServer({"POST /runs/batch": reply(200, items)})
    with make_client(server) as client:
        queued, pending, invalid, rejected = client.batch(runs)

    assert json.loads(server.requests[0].content) == {"runs": runs}
    assert isinstance(queued, RunAccepted) and queued.job_id == JOB
    assert isinstance(pending, PendingDocs) and pending.pending_docs == ["prd"]
    assert isinstance(invalid, BatchInvalid) and invalid.message == "body.story_id: String should match pattern"
    assert isinstance(rejected, BatchRejected) and rejected.message == "the queue is full"


NODE_EVENTS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("1-0", "started", {}),
    ("2-0", "node_started", {"node": "analyst"}),
    ("3-0", "node_finished", {"node": "analyst", "preview": "a"}),
    ("4-0", "complete", {"result": "summary"}),
)


def test_events_are_parsed_and_keepalives_skipped() -> None:
    keepalive = ": ping\n\n"
    server = FakeServer({f"GET /run/{JOB}/events": [sse(NODE_EVENTS[1], keepalive=keepalive), sse(*NODE_EVENTS[2:])]})
    with make_client(server) as client:
        first = list(client.events(JOB))
        rest = list(client.events(JOB, last_event_id="2-0"))

    assert first == [RunEvent(event="node_started", id="2-0", data={"node": "analyst"})]
    assert [event.event for event in rest] == ["node_finished", "complete"]
    assert rest[0].node == "analyst"
    assert rest[-1].is_terminal
    first_request, resumed = server.sent("GET", f"/run/{JOB}/events")
    assert first_request.headers["Accept"] == "text/event-stream"
    assert "Last-Event-ID" not in first_request.headers
    assert resumed.headers["Last-Event-ID"] == "2-0"
    assert resumed.headers["Authorization"] == "Bearer secret"


def test_events_error_status_raises() -> None:
    server = FakeServer({f"GET /run/{JOB}/events": reply(401, {"detail": "missing or wrong API key"})})
    with make_client(server) as client, pytest.raises(StoryflowError) as raised:
        list(client.events(JOB))

    assert str(raised.value) == "HTTP 401: missing or wrong API key"


def test_wait_follows_events_then_fetches_the_record() -> None:
    server = FakeServer({f"GET /run/{JOB}/events": sse(*NODE_EVENTS), f"GET /run/{JOB}": reply(200, record())})
    seen: list[str] = []
    with make_client(server) as client:
        run = client.wait(JOB, timeout=5, on_event=lambda event: seen.append(event.event))

    assert run.status == "complete"
    assert seen == ["started", "node_started", "node_finished", "complete"]
    assert len(server.sent("GET", f"/run/{JOB}")) == 1


def test_wait_resumes_a_dropped_stream_from_the_last_event_id() -> None:
    server = FakeServer(
        {
            f"GET /run/{JOB}/events": [sse(*NODE_EVENTS[:2]), sse(*NODE_EVENTS[2:])],
            f"GET /run/{JOB}": reply(200, record()),
        }
    )
    with make_client(server) as client:
        assert client.wait(JOB).status == "complete"

    assert server.sent("GET", f"/run/{JOB}/events")[1].headers["Last-Event-ID"] == "2-0"


def test_wait_polls_when_the_events_route_is_missing() -> None:
    polls = [reply(200, record("queued")), reply(200, record("in_progress")), reply(200, record("complete"))]
    server = FakeServer({f"GET /run/{JOB}": polls})
    with make_client(server) as client:
        run = client.wait(JOB, timeout=5)

    assert run.status == "complete"
    assert len(server.sent("GET", f"/run/{JOB}")) == 3


def test_wait_gives_up_after_the_timeout_with_the_last_record() -> None:
    server = FakeServer({f"GET /run/{JOB}": reply(200, record("in_progress"))})
    with make_client(server) as client, pytest.raises(WaitTimeout) as raised:
        client.wait(JOB, timeout=0)

    assert raised.value.record.status == "in_progress"
    assert str(raised.value) == f"run {JOB} is still in_progress after 0s"


def test_wait_on_an_unknown_run_reports_not_found() -> None:
    server = FakeServer({f"GET /run/{JOB}": reply(404, {"detail": "run not found"})})
    with make_client(server) as client, pytest.raises(StoryflowError) as raised:
        client.wait(JOB, timeout=5)

    assert raised.value.status_code == 404


async def test_async_submit_sends_the_same_request() -> None:
    server = FakeServer({"POST /run": reply(202, ACCEPTED)})
    async with make_async_client(server) as client:
        answer = await client.submit("story-1", "hello", idempotency_key="k-2", wait=1.5)

    assert isinstance(answer, RunAccepted)
    (request,) = server.requests
    assert request.headers["Authorization"] == "Bearer secret"
    assert request.headers["Idempotency-Key"] == "k-2"
    assert request.url.params["wait"] == "1.5"


async def test_async_events_and_wait() -> None:
    server = FakeServer({f"GET /run/{JOB}/events": sse(*NODE_EVENTS), f"GET /run/{JOB}": reply(200, record())})
    seen: list[str | None] = []
    async with make_async_client(server) as client:
        events = [event async for event in client.events(JOB)]
        run = await client.wait(JOB, 5, on_event=lambda event: seen.append(event.node))

    assert [event.id for event in events] == ["1-0", "2-0", "3-0", "4-0"]
    assert run.result == "summary"
    assert seen == [None, "analyst", "analyst", None]


async def test_async_wait_polls_without_events_and_times_out() -> None:
    server = FakeServer({f"GET /run/{JOB}": [reply(200, record("queued")), reply(200, record("complete"))]})
    async with make_async_client(server) as client:
        assert (await client.wait(JOB, 5)).status == "complete"

    stuck = FakeServer({f"GET /run/{JOB}": reply(200, record("queued"))})
    async with make_async_client(stuck) as client:
        with pytest.raises(WaitTimeout) as raised:
            await client.wait(JOB, 0.05)

    assert raised.value.record.status == "queued"


async def test_async_errors_match_the_sync_client() -> None:
    server = FakeServer({"POST /runs/batch": reply(422, {"detail": VALIDATION_DETAIL})})
    async with make_async_client(server) as client:
        with pytest.raises(StoryflowError) as raised:
            await client.batch([{}])

    assert str(raised.value) == "HTTP 422: body.story_id: String should match pattern; body.input: Field required"
