"""Fuzzing: schemathesis drives every operation of the app's OpenAPI, in process, with a valid key.

Fails on any 5xx, any response whose status code or content type the OpenAPI does not document, and
any response body that does not match its documented schema. The app runs against the session's real
Redis, with one worker process, so `POST /run?wait=` returns once the run finishes (with no worker it
would hold every such request for up to 60 s). Only the shipped flows are loaded: the test-only agents
include ones that kill their process or block its event loop on purpose.

The OpenAPI does not depend on Redis, so it is read at collection time from an app that is never started,
and each operation is its own test; the requests go to an app built on the session's Redis.
(`schemathesis.pytest.from_fixture` would spare the second app, but as of schemathesis 4.32 it reads
`Function._nodeid`, which pytest 9.2 no longer has.)

Generated job ids are random, so the run routes only ever answer 404 there; a second pass replays the
`/run/{job_id}...` operations against a run that exists and has finished. Last, schemathesis never sends
a JSON string holding a lone UTF-16 surrogate (valid JSON, not valid Unicode), so those are sent by hand.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis as redis_sync
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.main import create_app
from infra import keys
from infra.settings import Settings
from tests.conftest import Processes, make_settings

API_KEY = "fuzz-key-1234"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
SHIPPED_ONLY = ""  # agent_modules: no test-only agents
BASE_URL = "http://storyflow"
STREAM_TIMEOUT_S = 3.0  # an event stream still open after this long is cut and reported
FUZZ_SETTINGS = settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture],
)
GENERATED: Counter[str] = Counter()  # requests sent, per operation


def fuzz_settings(redis_url: str) -> Settings:
    return make_settings(redis_url, api_keys=f"fuzz:{API_KEY}", agent_modules=SHIPPED_ONLY)


OPENAPI = create_app(fuzz_settings("redis://openapi-only.invalid")).openapi()
schema = schemathesis.openapi.from_dict(OPENAPI)
run_routes = schema.include(path_regex=r"^/run/\{job_id\}")


def _wait_for_worker(redis_url: str, timeout: float = 20.0) -> None:
    client = redis_sync.Redis.from_url(redis_url)
    try:
        deadline = time.monotonic() + timeout
        while not client.zcard(keys.WORKERS_SEEN):
            if time.monotonic() > deadline:
                raise AssertionError(f"no worker heartbeat within {timeout}s")
            time.sleep(0.1)
    finally:
        client.close()


def _report(pytestconfig: pytest.Config) -> None:
    by_hand = sum(n for label, n in GENERATED.items() if label.endswith("by hand)"))
    finished = sum(n for label, n in GENERATED.items() if label.endswith("(finished run)"))
    generated = sum(GENERATED.values()) - by_hand
    lines = [f"schemathesis: {generated} generated requests ({finished} to a finished run), {by_hand} by hand"]
    lines += [f"  {count:4d}  {label}" for label, count in sorted(GENERATED.items())]
    capture = pytestconfig.pluginmanager.get_plugin("capturemanager")
    if capture is None:
        print("\n".join(lines))
        return
    with capture.global_and_fixture_disabled():
        print("\n" + "\n".join(lines))


@pytest.fixture(scope="module")
def fuzz_app(redis_url: str, pytestconfig: pytest.Config) -> Iterator[FastAPI]:
    flusher = redis_sync.Redis.from_url(redis_url)
    flusher.flushdb()
    flusher.close()
    procs = Processes(redis_url)
    try:
        procs.worker(STORYFLOW_AGENT_MODULES=SHIPPED_ONLY)
        _wait_for_worker(redis_url)
        app = create_app(fuzz_settings(redis_url))
        assert app.openapi() == OPENAPI
        # Schemathesis runs the app's lifespan on its own event loop, the one every request then runs on,
        # so the Redis client the lifespan makes is only ever used on the loop it was made on.
        try:
            yield app
        finally:
            asgi.shutdown_lifespans()
    finally:
        procs.stop_all()
        _report(pytestconfig)


def request(app: FastAPI, method: str, path: str, **kwargs: Any) -> Any:
    """One request by hand, through the same in-process client (and event loop) schemathesis uses."""
    headers = {**AUTH, "Content-Type": "application/json"}
    with asgi.get_client(app) as client:
        return client.request(method, path, headers=headers, timeout=30, **kwargs)


@pytest.fixture(scope="module")
def finished_run(fuzz_app: FastAPI) -> str:
    response = request(fuzz_app, "POST", "/run?wait=20", json={"input": "fuzz the run routes", "story_id": "fuzz"})
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "complete", response.text
    job_id: str = response.json()["job_id"]
    return job_id


def count(case: schemathesis.Case, suffix: str = "") -> None:
    """One request sent; probes of methods an operation does not have count for that operation."""
    GENERATED[f"{case.operation.method.upper()} {case.operation.path}{suffix}"] += 1


def call(case: schemathesis.Case, app: FastAPI) -> schemathesis.Response:
    return case.call_and_validate(app=app, base_url=BASE_URL, headers=AUTH, checks=CHECKS, timeout=STREAM_TIMEOUT_S)


@schema.parametrize()
@FUZZ_SETTINGS
def test_api_matches_its_openapi(case: schemathesis.Case, fuzz_app: FastAPI) -> None:
    count(case)
    call(case, fuzz_app)


@run_routes.parametrize()
@FUZZ_SETTINGS
def test_existing_run_matches_its_openapi(case: schemathesis.Case, fuzz_app: FastAPI, finished_run: str) -> None:
    case.path_parameters = {**(case.path_parameters or {}), "job_id": finished_run}
    count(case, " (finished run)")
    response = call(case, fuzz_app)
    assert not response.stream_cut_short, f"the event stream of a finished run was still open after {STREAM_TIMEOUT_S}s"


@pytest.fixture(scope="module")
def last_event_ids(fuzz_app: FastAPI, finished_run: str) -> list[str]:
    response = request(fuzz_app, "GET", f"/run/{finished_run}/events")
    assert response.status_code == 200, response.text
    return [line.removeprefix("id:").strip() for line in response.text.splitlines() if line.startswith("id:")]


# An EventSource reconnects after the stream ends, sending the id of the last event it got: the terminal one.
@pytest.mark.parametrize(
    ("last_event_id", "status"),
    [
        ("terminal", None),
        ("99999999999999-0", None),
        ("1-18446744073709551616", 422),  # a sequence number past 2**64 - 1: Redis refuses the id
        ("18446744073709551616-0", 422),
    ],
)
def test_resuming_the_events_of_a_finished_run(
    fuzz_app: FastAPI, finished_run: str, last_event_ids: list[str], last_event_id: str, status: int | None
) -> None:
    header = last_event_ids[-1] if last_event_id == "terminal" else last_event_id
    case = schema["/run/{job_id}/events"]["GET"].Case(
        path_parameters={"job_id": finished_run}, headers={"last-event-id": header}
    )
    count(case, " (resume, by hand)")
    response = call(case, fuzz_app)
    assert not response.stream_cut_short, f"Last-Event-ID {header}: the stream was still open after {STREAM_TIMEOUT_S}s"
    if status is not None:
        assert response.status_code == status, response.text


# Schemathesis never sends a lone UTF-16 surrogate: `"\ud800"` is valid JSON, but not a Unicode character.
LONE = "\ud800"


@pytest.mark.parametrize(
    ("path", "method", "body"),
    [
        ("/run", "POST", {"input": LONE, "story_id": "fuzz"}),
        ("/run", "POST", {"input": "x", "story_id": LONE}),
        ("/run", "POST", {"input": "x", "story_id": "fuzz", "flow": LONE}),
        ("/run", "POST", {"input": "x", "story_id": "fuzz", LONE: "x"}),
        ("/runs/batch", "POST", {"runs": [{"input": LONE, "story_id": "fuzz"}]}),
        ("/runs/batch", "POST", {"runs": [{"input": "x", "story_id": "fuzz", "flow": LONE}]}),
        ("/docs/{doc_id}", "PUT", {"content": LONE}),
    ],
    ids=["input", "story_id", "flow", "key", "batch-input", "batch-flow", "doc-content"],
)
def test_lone_surrogates_are_refused(fuzz_app: FastAPI, path: str, method: str, body: dict[str, Any]) -> None:
    case = schema[path][method].Case(path_parameters={"doc_id": "fuzz"} if "{doc_id}" in path else None, body=body)
    count(case, " (lone surrogate, by hand)")
    response = call(case, fuzz_app)
    # Not valid Unicode, so not text a JSON body may carry: the whole body is refused, a batch's too.
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["ctx"]["error"] == "no low surrogate in string"
