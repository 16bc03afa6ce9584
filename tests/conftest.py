"""A real Redis for the whole session (the embedded one `storyflow up` starts, or STORYFLOW_REDIS_URL),
flushed between tests; helpers to run the API in process and workers in process or as processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from api.main import create_app
from infra.embedded_redis import EmbeddedRedis
from infra.settings import Settings
from tests.support.receiver import receiver  # noqa: F401  (a fixture: a webhook receiver on loopback)
from worker.main import build_worker

ROOT = Path(__file__).resolve().parents[1]
TEST_AGENTS = "tests.support.agents"
# Modules of pure logic: no Redis, no processes, no network.
UNIT_MODULES = {"test_units.py", "test_arq_compat.py", "test_cli_client.py", "test_cli_batch.py", "test_compose.py"}
# Integration modules that take long (fuzzing, rate-limit windows, timeouts): left out of `-m fast`.
SLOW_MODULES = {
    "test_fuzz.py", "test_llm_limits.py", "test_tls_redis.py", "test_retention.py", "test_event_streams.py",
    "test_processes.py", "test_openai_llm.py", "test_client_wait.py", "test_http_limits.py", "test_llm_stream.py",
}  # fmt: skip
PROCESS_MODULES = {"test_up.py", "test_cli_e2e.py"}  # they start `storyflow` commands themselves


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test gets its kind (README "Tests"): unit, integration, faults or bench; and `processes`
    when it starts real API or worker processes (the slow part of integration)."""
    for item in items:
        path = Path(str(item.fspath))
        if "faults" in path.parts:
            item.add_marker(pytest.mark.faults)
        elif "bench" in path.parts:
            item.add_marker(pytest.mark.bench)
        elif path.name in UNIT_MODULES:
            item.add_marker(pytest.mark.unit)
        else:
            item.add_marker(pytest.mark.integration)
        starts_processes = "processes" in getattr(item, "fixturenames", ()) or path.name in PROCESS_MODULES
        if starts_processes:
            item.add_marker(pytest.mark.processes)
        slow = item.get_closest_marker("slow") is not None or path.name in SLOW_MODULES
        kind_is_fast = "faults" not in path.parts and "bench" not in path.parts
        if path.name in UNIT_MODULES or (kind_is_fast and not starts_processes and not slow):
            item.add_marker(pytest.mark.fast)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    external = os.environ.get("STORYFLOW_REDIS_URL")
    if external:
        yield external
        return
    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as embedded:
        yield embedded.url


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A Redis of this test's own, so it can be killed and restarted."""
    server = EmbeddedRedis(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    await client.flushdb()
    yield client
    await client.aclose()


def make_settings(redis_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "redis_url": redis_url, "agent_modules": TEST_AGENTS, "lease_seconds": 3, "poll_interval": 0.2,
        "shutdown_grace": 5,
    }  # fmt: skip
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def settings(redis_url: str, redis: Redis) -> Settings:
    return make_settings(redis_url)


async def api_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://storyflow") as client:
            yield client


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async for c in api_client(settings):
        yield c


async def drain(settings: Settings) -> None:
    """Run an in-process worker until the queue is empty (arq's burst mode)."""
    worker = build_worker(settings, burst=True)
    worker.poll_delay_s = 0.01
    try:
        await worker.main()
    finally:
        await worker.close()


def child_env(redis_url: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "STORYFLOW_REDIS_URL": redis_url, "STORYFLOW_AGENT_MODULES": TEST_AGENTS,
        "STORYFLOW_LEASE_SECONDS": "3", "STORYFLOW_POLL_INTERVAL": "0.2", "STORYFLOW_SHUTDOWN_GRACE": "5",
        "PYTHONPATH": str(ROOT),
    })  # fmt: skip
    env.update(extra)
    return env


class Processes:
    """Worker and API processes started by a test, all stopped at its end."""

    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url
        self.started: list[subprocess.Popen[bytes]] = []

    def worker(self, **env: str) -> subprocess.Popen[bytes]:
        return self._start(["worker"], env)

    def api(self, port: int, **env: str) -> subprocess.Popen[bytes]:
        return self._start(["api", "--port", str(port)], env)

    def _start(self, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            [sys.executable, "-m", "infra.cli", *args], env=child_env(self.redis_url, **env), cwd=ROOT
        )
        self.started.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.started:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def processes(redis_url: str, redis: Redis) -> Iterator[Processes]:
    procs = Processes(redis_url)
    yield procs
    procs.stop_all()


async def wait_for(predicate: Any, timeout: float = 15.0, interval: float = 0.05) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


@pytest.fixture
async def background_worker_factory() -> AsyncIterator[Any]:
    """Start in-process workers (not burst) with given settings; all are stopped at the test's end."""
    started: list[tuple[Any, asyncio.Task[None]]] = []

    async def start(settings: Settings) -> Any:
        worker = build_worker(settings)
        started.append((worker, asyncio.create_task(worker.main())))
        return worker

    yield start
    for worker, task in started:
        worker.settings = worker.settings.model_copy(update={"shutdown_grace": 0})
        worker.request_stop()
        await task
        await worker.close()


@pytest.fixture
async def background_worker(settings: Settings, background_worker_factory: Any) -> Any:
    """An in-process worker that keeps running for the test (not burst)."""
    return await background_worker_factory(settings)


async def wait_http_ok(url: str, timeout: float = 20.0) -> None:
    async with httpx.AsyncClient() as http:

        async def ok() -> bool:
            try:
                return (await http.get(url)).status_code == 200
            except httpx.TransportError:
                return False

        await wait_for(ok, timeout=timeout, interval=0.1)


RUN = {"input": "Users want PDF export.", "story_id": "story-1"}


async def submit(client: httpx.AsyncClient, **overrides: str) -> str:
    """POST /run of RUN with `overrides`; the job id of the queued run."""
    response = await client.post("/run", json={**RUN, **overrides})
    assert response.status_code == 202, response.text
    job_id: str = response.json()["job_id"]
    return job_id


async def record(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    response = await client.get(f"/run/{job_id}")
    assert response.status_code == 200, response.text
    run: dict[str, Any] = response.json()
    return run


async def until_status(client: httpx.AsyncClient, job_id: str, *statuses: str, timeout: float = 30) -> dict[str, Any]:
    async def reached() -> dict[str, Any] | None:
        run = await record(client, job_id)
        return run if run["status"] in statuses else None

    result: dict[str, Any] = await wait_for(reached, timeout=timeout)
    return result
