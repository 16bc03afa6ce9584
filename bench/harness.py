"""Processes, Redis and measuring tools of the benchmark.

Everything talks to 127.0.0.1 only: a private redis-server (infra.embedded_redis) in a temp dir, the
API and worker processes started with `python -m infra.cli`, and the baseline arq worker
(`python -m bench.arq_baseline`). Every child is stopped in a `finally`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from arq.connections import ArqRedis

from bench import arq_baseline
from infra import keys
from infra.embedded_redis import EmbeddedRedis, free_port
from infra.redis import create_redis

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
TENANT = "default"  # auth is off in the benchmark: every run belongs to tenant `default`
START_TIMEOUT_S = 30.0
STOP_GRACE_S = 10.0
LOG_TAIL_CHARS = 2000
HTTP_TIMEOUT_S = 30.0

# Environment every storyflow process of the benchmark gets (on top of STORYFLOW_REDIS_URL).
STORYFLOW_ENV = {
    "STORYFLOW_MAX_QUEUED_RUNS": "100000000",  # scenario 5 fills the queue with no worker running
    "STORYFLOW_AGENT_MODULES": "bench.flows",  # adds the one-step flow `bench_one` (scenario 6)
    "STORYFLOW_SHUTDOWN_GRACE": "5",
}


class BenchError(RuntimeError):
    """A scenario could not be measured (a process died, a run failed, a wait timed out)."""


# --- small helpers -----------------------------------------------------------------------------


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile; nan for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


async def wait_until(
    check: Callable[[], Awaitable[bool]],
    *,
    timeout: float,  # noqa: ASYNC109
    interval: float,
    what: str,
) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(interval)


def run_body(index: int, *, tag: str, flow: str = "default") -> dict[str, str]:
    """A run of its own story: runs of one story execute one at a time, by design."""
    return {"flow": flow, "input": f"bench input {index}", "story_id": f"{tag}-{index}"}


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else math.nan


# --- the machine ---------------------------------------------------------------------------------


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc); 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds all processes of the machine have used (Linux /proc/stat); 0 when unknown."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


# --- child processes -----------------------------------------------------------------------------


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-LOG_TAIL_CHARS:]
        except OSError:
            return "(no log)"

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise BenchError(f"{self.name} exited with code {self.process.returncode}; log tail:\n{self.log_tail()}")


class Children:
    """Every process the benchmark starts; stop() ends them by pid (SIGTERM, then SIGKILL).

    With `profile_dir`, each storyflow process gets a `py-spy record` attached (collapsed stacks, one file
    per process), which writes its file when its target exits.
    """

    def __init__(self, log_dir: Path, profile_dir: Path | None = None) -> None:
        self.log_dir = log_dir
        self.profile_dir = profile_dir
        self.running: list[Child] = []
        self.profilers: dict[int, Child] = {}  # target pid -> its py-spy
        self.tag = "setup"  # names log and profile files after the scenario that started the process
        self._serial = 0

    def spawn(self, name: str, args: list[str], env: dict[str, str], *, profile: bool = True) -> Child:
        self._serial += 1
        stem = f"{self._serial:02d}-{self.tag}-{name}"
        log = self.log_dir / f"{stem}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, *args], cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        child = Child(name, process, log)
        self.running.append(child)
        if profile and self.profile_dir is not None:
            self.profilers[process.pid] = self._attach_profiler(stem, process.pid)
        return child

    def _attach_profiler(self, stem: str, pid: int) -> Child:
        assert self.profile_dir is not None
        py_spy = Path(sys.executable).with_name("py-spy")
        if not py_spy.exists():
            raise BenchError(f"--profile needs py-spy next to {sys.executable}: pip install py-spy")
        out = self.profile_dir / f"{stem}.txt"
        args = [str(py_spy), "record", "--pid", str(pid), "--rate", "250", "--format", "raw", "--nonblocking"]
        log = self.profile_dir / f"{stem}.py-spy.log"
        with log.open("wb") as log_out:
            process = subprocess.Popen(
                [*args, "--output", str(out)], stdin=subprocess.DEVNULL, stdout=log_out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        return Child("py-spy", process, log)

    def stop(self, children: Sequence[Child], grace: float = STOP_GRACE_S) -> None:
        for child in children:
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in children:
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()
            if child in self.running:
                self.running.remove(child)
        self._stop_profilers([child.process.pid for child in children])

    def _stop_profilers(self, pids: list[int]) -> None:
        """py-spy writes its file and exits when its target is gone; SIGINT (same effect) if it lingers."""
        profilers = [self.profilers.pop(pid) for pid in pids if pid in self.profilers]
        for profiler in profilers:
            try:
                profiler.process.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                profiler.process.send_signal(signal.SIGINT)
                try:
                    profiler.process.wait(timeout=STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    profiler.process.kill()
                    profiler.process.wait()

    def stop_all(self) -> None:
        self.stop(list(self.running))


# --- a minimal HTTP/1.1 keep-alive client, the load generator -------------------------------------


class HttpConnection:
    """One keep-alive connection; far cheaper per request than httpx, so the client is not the bottleneck."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(HOST, self.port)
        return self._reader, self._writer

    async def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        async with asyncio.timeout(HTTP_TIMEOUT_S):
            reader, writer = await self._connect()
            head = f"{method} {path} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\n"
            if body is not None:
                head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            writer.write(head.encode() + b"\r\n" + (body or b""))
            raw_head = await reader.readuntil(b"\r\n\r\n")
            status, length, close = self._parse_head(raw_head)
            payload = await reader.readexactly(length) if length else b""
        if close:
            await self.close()
        return status, payload

    @staticmethod
    def _parse_head(raw: bytes) -> tuple[int, int, bool]:
        lines = raw.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length, close = 0, False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                raise BenchError("chunked responses are not supported by the benchmark client")
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
        return status, length, close

    async def close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


Request = tuple[str, str, bytes | None]  # method, path, body


@dataclass
class LoadResult:
    elapsed_s: float
    latencies_ms: list[float]
    statuses: Counter[int]
    bodies: list[bytes]

    @property
    def per_second(self) -> float:
        return rate(len(self.latencies_ms), self.elapsed_s)

    def expect(self, status: int, what: str) -> None:
        if set(self.statuses) != {status}:
            raise BenchError(f"{what}: expected every answer to be {status}, got {dict(self.statuses)}")


async def run_load(port: int, requests: Sequence[Request], concurrency: int) -> LoadResult:
    """Send the requests over `concurrency` keep-alive connections, each taking the next one when free."""
    latencies = [0.0] * len(requests)
    bodies = [b""] * len(requests)
    statuses: Counter[int] = Counter()
    queue = iter(range(len(requests)))

    async def client() -> None:
        connection = HttpConnection(port)
        try:
            for index in queue:
                method, path, body = requests[index]
                started = time.perf_counter()
                status, bodies[index] = await connection.request(method, path, body)
                latencies[index] = (time.perf_counter() - started) * 1000
                statuses[status] += 1
        finally:
            await connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(min(concurrency, len(requests)))))
    return LoadResult(time.perf_counter() - started, latencies, statuses, bodies)


def post_runs(bodies: Sequence[dict[str, Any]], path: str = "/run") -> list[Request]:
    return [("POST", path, orjson.dumps(body)) for body in bodies]


def job_ids(result: LoadResult) -> list[str]:
    return [orjson.loads(body)["job_id"] for body in result.bodies]


# --- Redis: the private server and the probes on it ---------------------------------------------


def commandstats_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """Per command (name without `cmdstat_`): (calls, usec) between two INFO commandstats."""
    delta = {}
    for name, stats in after.items():
        old = before.get(name, {"calls": 0, "usec": 0})
        calls, usec = int(stats["calls"]) - int(old["calls"]), int(stats["usec"]) - int(old["usec"])
        if calls:
            delta[name.removeprefix("cmdstat_")] = (calls, usec)
    return delta


@dataclass
class Probe:
    """The benchmark's own Redis client; counts the queue polls it makes so they can be discounted."""

    redis: ArqRedis
    own: Counter[str] = field(default_factory=Counter)  # command -> calls made while measuring

    async def queue_length(self) -> int:
        self.own["zcard"] += 1
        return int(await self.redis.zcard(keys.ARQ_QUEUE))

    async def wait_drained(self, timeout: float, interval: float = 0.005) -> float:  # noqa: ASYNC109
        """Wait until arq's queue is empty (a job leaves it when it finishes); returns the time it was seen."""

        async def empty() -> bool:
            return await self.queue_length() == 0

        await wait_until(empty, timeout=timeout, interval=interval, what="the queue to drain")
        return time.perf_counter()

    async def commandstats(self) -> dict[str, Any]:
        stats: dict[str, Any] = await self.redis.info("commandstats")
        return stats

    async def statuses(self, ids: Sequence[str]) -> Counter[str]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hget(keys.run(TENANT, job_id), "status")
            raw = await pipe.execute()
        return Counter(orjson.loads(value) if value else "missing" for value in raw)

    async def expect_complete(self, ids: Sequence[str]) -> None:
        statuses = await self.statuses(ids)
        if statuses != Counter({"complete": len(ids)}):
            raise BenchError(f"expected {len(ids)} complete runs, got {dict(statuses)}")

    async def run_times(self, ids: Sequence[str]) -> list[tuple[float, float]]:
        """(started, finished) epoch seconds of finished runs, from their records."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hmget(keys.run(TENANT, job_id), ["started_at", "finished_at"])
            raw = await pipe.execute()
        return [(_epoch(orjson.loads(s)), _epoch(orjson.loads(f))) for s, f in raw if s and f]

    async def worker_in_flight(self) -> dict[str, int]:
        self.own["hgetall"] += 1
        raw = await self.redis.hgetall(keys.WORKERS_INFO)  # type: ignore[misc]
        return {wid.decode(): int(orjson.loads(info)["in_flight"]) for wid, info in raw.items()}


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


# --- the stack: Redis, the API, the workers -----------------------------------------------------


@dataclass
class Stack:
    """A private Redis plus the processes of a scenario; use as `async with Stack.open(...) as stack`."""

    redis_server: EmbeddedRedis
    children: Children
    probe: Probe
    arq: ArqRedis
    api_port: int = 0
    api_env: dict[str, str] = field(default_factory=dict)

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls, *, appendfsync: str | None = None, log_dir: Path | None = None, profile_dir: Path | None = None
    ) -> AsyncIterator[Stack]:
        with tempfile.TemporaryDirectory(prefix="storyflow-bench-") as tmp:
            for folder in (log_dir, profile_dir):
                if folder is not None:
                    folder.mkdir(parents=True, exist_ok=True)
            server = EmbeddedRedis(Path(tmp) / "redis")
            children = Children(log_dir or Path(tmp), profile_dir)
            server.start()
            probe_client, arq = create_redis(server.url), create_redis(server.url)
            try:
                if appendfsync:
                    await probe_client.config_set("appendfsync", appendfsync)
                yield cls(server, children, Probe(probe_client), arq)
            finally:
                children.stop_all()
                await probe_client.aclose()
                await arq.aclose()
                server.stop()

    @property
    def url(self) -> str:
        return self.redis_server.url

    def env(self, **overrides: str) -> dict[str, str]:
        env = {name: value for name, value in os.environ.items() if not name.startswith("STORYFLOW_")}
        env.update(STORYFLOW_ENV, STORYFLOW_REDIS_URL=self.url, PYTHONPATH=str(ROOT))
        env.update(overrides)
        return env

    async def flush(self) -> None:
        await self.probe.redis.flushall()

    async def redis_info(self) -> dict[str, str]:
        server = await self.probe.redis.info("server")
        fsync = await self.probe.redis.config_get("appendfsync")
        return {"version": str(server["redis_version"]), "appendfsync": str(fsync.get("appendfsync", "?"))}

    @contextlib.asynccontextmanager
    async def api(self) -> AsyncIterator[int]:
        """One API process, answering /healthz on entry (its port is also `self.api_port`), stopped on exit."""
        port = free_port()
        child = self.children.spawn("api", ["-m", "infra.cli", "api", "--port", str(port)], self.env())
        try:
            await self._wait_healthy(child, port)
            self.api_port = port
            yield port
        finally:
            self.children.stop([child])
            self.api_port = 0

    async def _wait_healthy(self, child: Child, port: int) -> None:
        connection = HttpConnection(port)

        async def healthy() -> bool:
            child.check_alive()
            try:
                status, _ = await connection.request("GET", "/healthz")
            except (OSError, asyncio.IncompleteReadError):
                await connection.close()
                return False
            return status == 200

        try:
            await wait_until(healthy, timeout=START_TIMEOUT_S, interval=0.05, what="the API to answer /healthz")
        finally:
            await connection.close()

    @contextlib.asynccontextmanager
    async def workers(self, count: int, **env: str) -> AsyncIterator[list[Child]]:
        """`count` storyflow worker processes, ready (heartbeat seen) on entry, stopped on exit."""
        started = [self.children.spawn("worker", ["-m", "infra.cli", "worker"], self.env(**env)) for _ in range(count)]
        try:
            await self._wait_workers_ready(started)
            yield started
        finally:
            self.children.stop(started)
            await self.probe.redis.delete(keys.WORKERS_INFO, keys.WORKERS_SEEN)

    async def _wait_workers_ready(self, started: list[Child]) -> None:
        pids = {child.process.pid for child in started}

        async def ready() -> bool:
            for child in started:
                child.check_alive()
            infos = await self.probe.redis.hvals(keys.WORKERS_INFO)  # type: ignore[misc]
            return pids <= {orjson.loads(info)["pid"] for info in infos}

        await wait_until(ready, timeout=START_TIMEOUT_S, interval=0.05, what="the workers' first heartbeat")

    @contextlib.asynccontextmanager
    async def arq_workers(self, count: int, max_jobs: int = arq_baseline.DEFAULT_MAX_JOBS) -> AsyncIterator[None]:
        """`count` baseline arq worker processes, ready on entry, stopped on exit."""
        env = self.env(BENCH_ARQ_MAX_JOBS=str(max_jobs))
        spawn = self.children.spawn
        started = [spawn("arq-worker", ["-m", "bench.arq_baseline"], env, profile=False) for _ in range(count)]
        try:
            await self._wait_arq_ready(started)
            yield
        finally:
            self.children.stop(started)

    async def _wait_arq_ready(self, started: list[Child]) -> None:
        ready_keys = [f"{arq_baseline.READY_KEY_PREFIX}{child.process.pid}" for child in started]

        async def ready() -> bool:
            for child in started:
                child.check_alive()
            return int(await self.probe.redis.exists(*ready_keys)) == len(ready_keys)

        await wait_until(ready, timeout=START_TIMEOUT_S, interval=0.05, what="the arq workers to start")

    async def enqueue(self, function: str, count: int, *args: Any, concurrency: int = 64) -> list[str]:
        """Enqueue `count` arq jobs with `concurrency` clients at once; returns their ids."""
        ids: list[str] = []
        jobs = iter(range(count))

        async def client() -> None:
            for _ in jobs:
                job = await self.arq.enqueue_job(function, *args)
                if job is None:
                    raise BenchError("arq refused a job (duplicate id)")
                ids.append(job.job_id)

        await asyncio.gather(*(client() for _ in range(min(concurrency, count))))
        return ids


class CpuMeter:
    """CPU used by each process of the stack (and the benchmark itself) between start() and stop(), in cores."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self._start: dict[str, float] = {}
        self._machine_start = 0.0
        self._started_at = 0.0

    def _pids(self) -> dict[str, int]:
        pids = {"bench": os.getpid()}
        if self.stack.redis_server.pid is not None:
            pids["redis"] = self.stack.redis_server.pid
        names = Counter(child.name for child in self.stack.children.running)
        seen: Counter[str] = Counter()
        for child in self.stack.children.running:
            seen[child.name] += 1
            label = child.name if names[child.name] == 1 else f"{child.name}{seen[child.name]}"
            pids[label] = child.process.pid
        return pids

    def start(self) -> None:
        self._start = {label: cpu_seconds(pid) for label, pid in self._pids().items()}
        self._machine_start = machine_busy_seconds()
        self._started_at = time.perf_counter()

    def stop(self) -> str:
        """`CPU cores busy: bench 0.10, redis 0.30, ..., other processes 0.05`."""
        wall = time.perf_counter() - self._started_at
        if wall <= 0:
            return "CPU cores busy: (no time passed)"
        used = {label: cpu_seconds(pid) - self._start.get(label, 0.0) for label, pid in self._pids().items()}
        others = machine_busy_seconds() - self._machine_start - sum(used.values())
        parts = [f"{label} {seconds / wall:.2f}" for label, seconds in used.items()]
        return "CPU cores busy: " + ", ".join([*parts, f"other processes {max(0.0, others) / wall:.2f}"])
