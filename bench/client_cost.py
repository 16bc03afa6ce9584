"""What a run costs the server when its client learns the end over HTTP, beside raw arq, one Redis, one run.

    .venv/bin/python -m bench.client_cost [--runs 1000] [--clients 32] [--only wait,poll,arq,inflight]

CPU seconds of each process from /proc (user + system), around `--runs` runs or jobs:
- `wait`: storyflow, each of `--clients` keep-alive clients sends `POST /run?wait=30` (the `default`
  flow: 2 steps, echo without delay) and takes the next when the answer comes;
- `poll`: storyflow, each client sends `POST /run`, then `GET /run/{id}` every POLL_S until complete;
- `arq`: raw arq no-op jobs, each client (in this process: the producer) enqueues one and polls its
  result every POLL_S (arq's `Job.result`), on the same Redis, one `bench.arq_baseline` worker;
- `inflight`: one worker with STORYFLOW_WORKER_CONCURRENCY=1000 and STORYFLOW_ECHO_DELAY=1 takes 1000
  runs: the most it held at once, and its event-loop lag (the worker measures it, see worker/main.py).

The load generator is the benchmark's own raw-socket HTTP/1.1 client (bench.harness.HttpConnection):
its CPU per request is reported beside the server's, to show it is not the bottleneck.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import orjson

from bench import arq_baseline
from bench.harness import HttpConnection, Stack, cpu_seconds, wait_until
from bench.scenarios import Cost, cost_between, cost_snapshot
from infra import keys

T = TypeVar("T")
POLL_S = 0.2
WARMUP = 100


class Meter:
    """CPU seconds of named processes between start() and stop()."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.start_s: dict[str, float] = {}

    def start(self) -> None:
        self.start_s = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def stop(self) -> dict[str, float]:
        return {name: cpu_seconds(pid) - self.start_s[name] for name, pid in self.pids.items()}


async def drive(clients: int, count: int, one: Callable[[HttpConnection, int], Awaitable[int]], port: int) -> int:
    """`count` calls of `one` spread over `clients` connections; returns the HTTP requests they made."""
    indexes = iter(range(count))
    requests = 0

    async def client() -> None:
        nonlocal requests
        connection = HttpConnection(port)
        try:
            for index in indexes:
                made = await one(connection, index)
                requests += made
        finally:
            await connection.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    return requests


def body(index: int) -> bytes:
    return orjson.dumps({"story_id": f"cost-{index}", "input": f"Run {index} of the cost benchmark."})


async def with_wait(connection: HttpConnection, index: int) -> int:
    status, reply = await connection.request("POST", "/run?wait=30", body(index))
    if status != 200 or orjson.loads(reply)["status"] != "complete":
        raise RuntimeError(f"POST /run?wait answered {status} {reply[:200]!r}")
    return 1


async def with_polling(connection: HttpConnection, index: int) -> int:
    status, reply = await connection.request("POST", "/run", body(index))
    if status != 202:
        raise RuntimeError(f"POST /run answered {status} {reply[:200]!r}")
    job_id = orjson.loads(reply)["job_id"]
    requests = 1
    while True:
        await asyncio.sleep(POLL_S)
        status, reply = await connection.request("GET", f"/run/{job_id}")
        requests += 1
        if orjson.loads(reply)["status"] == "complete":
            return requests


@dataclass
class Measured(Generic[T]):
    result: T
    cpu_s: dict[str, float]  # of each named process, Redis included
    own_cpu_s: float  # of this process: the load generator, or arq's producer
    wall_s: float
    cost: Cost

    def per_run(self, runs: int) -> dict[str, float]:
        return {
            **{name: seconds * 1000 / runs for name, seconds in self.cpu_s.items()},
            "commands": self.cost.total / runs, "per_s": runs / self.wall_s,
            **{f"cmd:{name}": calls / runs for name, calls in self.cost.calls.items()},
        }  # fmt: skip


async def measure(stack: Stack, pids: dict[str, int], work: Awaitable[T]) -> Measured[T]:
    """CPU of `pids` and of Redis, this process' own CPU, the time and Redis commands while `work` runs."""
    meter = Meter({**pids, "redis": stack.redis_server.pid or 0})
    before = await cost_snapshot(stack)
    own_before = time.process_time()
    meter.start()
    started = time.perf_counter()
    result = await work
    wall = time.perf_counter() - started
    used = meter.stop()
    own = time.process_time() - own_before
    return Measured(result, used, own, wall, cost_between(before, await cost_snapshot(stack)))


async def storyflow(stack: Stack, runs: int, clients: int, one: Callable[..., Awaitable[int]]) -> dict[str, float]:
    async with stack.api() as port, stack.workers(1) as workers:
        await drive(clients, WARMUP, one, port)
        api = next(child for child in stack.children.running if child.name == "api")
        pids = {"api": api.process.pid, "worker": workers[0].process.pid}
        measured = await measure(stack, pids, drive(clients, runs, one, port))
    await stack.flush()
    requests = measured.result
    return {
        **measured.per_run(runs), "client_per_request": measured.own_cpu_s * 1000 / requests,
        "requests": requests / runs,
    }  # fmt: skip


async def raw_arq(stack: Stack, runs: int, clients: int) -> dict[str, float]:
    async with stack.arq_workers(1):
        worker = next(c for c in stack.children.running if c.name == "arq-worker")

        async def one() -> None:
            job = await stack.arq.enqueue_job(arq_baseline.NOOP)
            assert job is not None
            await job.result(timeout=30, poll_delay=POLL_S)

        async def clients_run(count: int) -> None:
            pending = iter(range(count))

            async def client() -> None:
                for _ in pending:
                    await one()

            await asyncio.gather(*(client() for _ in range(clients)))

        await clients_run(WARMUP)
        measured = await measure(stack, {"worker": worker.process.pid}, clients_run(runs))
    await stack.flush()
    return {**measured.per_run(runs), "api": measured.own_cpu_s * 1000 / runs}


async def in_flight(stack: Stack, runs: int = 1000) -> dict[str, float]:
    env = {"STORYFLOW_WORKER_CONCURRENCY": "1000", "STORYFLOW_ECHO_DELAY": "1"}
    async with stack.api() as port, stack.workers(1, **env):
        connection = HttpConnection(port)
        for start in range(0, runs, 500):
            batch = [{"story_id": f"inflight-{i}", "input": f"run {i}"} for i in range(start, start + 500)]
            status, _ = await connection.request("POST", "/runs/batch", orjson.dumps({"runs": batch}))
            assert status == 200
        await connection.close()
        most, lags = 0, []

        async def drained() -> bool:
            nonlocal most
            infos = [orjson.loads(raw) for raw in await stack.probe.redis.hvals(keys.WORKERS_INFO)]  # type: ignore[misc]
            for info in infos:
                most = max(most, info["in_flight"])
                lags.append(info.get("loop_lag_p99_ms", float("nan")))
            return not await stack.probe.redis.scard(keys.active_runs("default"))  # type: ignore[misc]

        await wait_until(drained, timeout=120, interval=0.5, what="the 1000 runs to finish")
    await stack.flush()
    print("lag p99 per heartbeat (ms):", lags, file=sys.stderr)
    return {"most_in_flight": most, "lag_p99_ms": max(lags) if lags else float("nan")}


def table(sf: dict[str, float], arq: dict[str, float], label: str) -> list[str]:
    rows = [f"| per run / job ({label}) | storyflow | raw arq | ratio |", "|---|---:|---:|---:|"]
    total_sf = sf["worker"] + sf["redis"] + sf["api"]
    total_arq = arq["worker"] + arq["redis"] + arq["api"]
    for name, a, b in (
        ("worker CPU, ms", sf["worker"], arq["worker"]),
        ("Redis CPU, ms", sf["redis"], arq["redis"]),
        ("API (storyflow) / producer (arq) CPU, ms", sf["api"], arq["api"]),
        ("total server-side CPU, ms", total_sf, total_arq),
        ("Redis commands", sf["commands"], arq["commands"]),
        ("runs / jobs per second", sf["per_s"], arq["per_s"]),
    ):
        rows.append(f"| {name} | {a:.2f} | {b:.2f} | {a / b:.2f}x |")
    rows.append(f"| load generator CPU per HTTP request, ms | {sf['client_per_request']:.3f} | | |")
    rows.append(f"| HTTP requests per run | {sf['requests']:.1f} | | |")
    commands = sorted({k for k in (*sf, *arq) if k.startswith("cmd:")}, key=lambda k: -sf.get(k, 0))
    breakdown = ", ".join(f"{k[4:]} {sf.get(k, 0):.1f}/{arq.get(k, 0):.1f}" for k in commands)
    return [*rows, "", f"Redis commands per run / per job: {breakdown}"]


async def main(runs: int, clients: int, only: set[str], profile: Path | None) -> None:
    out: list[str] = []
    async with Stack.open(profile_dir=profile) as stack:
        arq = await raw_arq(stack, runs, clients) if only & {"arq", "wait", "poll"} else {}
        if "wait" in only:
            out += table(await storyflow(stack, runs, clients, with_wait), arq, "POST /run?wait")
        if "poll" in only:
            out += ["", *table(await storyflow(stack, runs, clients, with_polling), arq, f"poll every {POLL_S}s")]
        if "inflight" in only:
            held = await in_flight(stack)
            out += ["", f"one worker, concurrency 1000, echo 1 s: most in flight {held['most_in_flight']:.0f}, "
                    f"event-loop lag p99 {held['lag_p99_ms']:.1f} ms"]  # fmt: skip
    print("\n".join(out))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.client_cost", description=__doc__)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--only", default="wait,poll,arq,inflight")
    parser.add_argument("--profile", type=Path, default=None, help="py-spy collapsed stacks of API and worker here")
    args = parser.parse_args()
    asyncio.run(main(args.runs, args.clients, set(args.only.split(",")), args.profile))
