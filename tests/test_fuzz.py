"""Fuzzing: schemathesis drives every operation of the app's OpenAPI, in process, with a valid key.

Fails on any 5xx, any response whose body does not match its documented schema, any status code or
content type the OpenAPI does not document. The app runs against the session's real Redis, with one
worker process, so `POST /run?wait=` returns once the run finishes (with no worker it would hold every
such request for up to 60 s). Only the shipped flows are loaded: the test-only agents include ones that
kill their process or block its event loop on purpose.

The OpenAPI does not depend on Redis, so it is read at collection time from an app that is never started,
and each operation is its own test; the requests go to an app built from the session's Redis URL.
(`schemathesis.pytest.from_fixture` would avoid the second app, but as of schemathesis 4.32 it reads
`Function._nodeid`, which pytest 9.2 no longer has.)
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

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
from tests.conftest import Processes, make_settings

API_KEY = "fuzz-key-1234"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
SHIPPED_ONLY = ""  # agent_modules: no test-only agents
BASE_URL = "http://storyflow"
GENERATED: Counter[str] = Counter()  # requests sent, per operation


def fuzz_settings(redis_url: str) -> object:
    return make_settings(redis_url, api_keys=f"fuzz:{API_KEY}", agent_modules=SHIPPED_ONLY)


OPENAPI = create_app(fuzz_settings("redis://openapi-only.invalid")).openapi()
schema = schemathesis.openapi.from_dict(OPENAPI)


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
    lines = [f"schemathesis: {sum(GENERATED.values())} requests over {len(GENERATED)} operations"]
    lines += [f"  {count:4d}  {operation}" for operation, count in sorted(GENERATED.items())]
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
        app = create_app(fuzz_settings(redis_url))  # type: ignore[arg-type]
        assert app.openapi() == OPENAPI
        # Schemathesis runs the app's lifespan on its own event loop, the one every generated request then
        # runs on, so the Redis client the lifespan makes is only ever used on the loop it was made on.
        try:
            yield app
        finally:
            asgi.shutdown_lifespans()
    finally:
        procs.stop_all()
        _report(pytestconfig)


@schema.parametrize()
@settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture],
)
def test_api_matches_its_openapi(case: schemathesis.Case, fuzz_app: FastAPI) -> None:
    GENERATED[f"{case.method.upper()} {case.path}"] += 1
    case.call_and_validate(app=fuzz_app, base_url=BASE_URL, headers=AUTH, checks=CHECKS)
