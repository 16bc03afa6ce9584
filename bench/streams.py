"""Many open event streams on one API process, while other requests go on.

    .venv/bin/python -m bench.streams [--streams 2000] [--runs 200] [--requests 300]

One API process on a private Redis; `--streams` SSE connections (raw sockets) follow `--runs`
queued runs. Measured twice, GET /run and POST /run (status codes, p50 and p99 over one keep-alive
connection), the API's RSS and Redis' connected clients: with every stream open and waiting, then
while one worker runs the runs and every stream receives them; at the end, the streams that saw
their run's `complete`. Before the shared event reader, each stream held a pooled connection: at
about 510 streams every other request answered 503.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson

from bench.harness import (
    HttpConnection,
    Stack,
    job_ids,
    percentile,
    post_runs,
    run_body,
    run_load,
    wait_until,
)
from infra.embedded_redis import free_port

STREAMS_TIMEOUT_S = 300.0


@dataclass
class Requests:
    """Answers to GET /run and POST /run taken in turn: status codes and latencies (ms) of each."""

    statuses: dict[str, Counter[int]] = field(default_factory=lambda: {"GET /run": Counter(), "POST /run": Counter()})
    latencies: dict[str, list[float]] = field(default_factory=lambda: {"GET /run": [], "POST /run": []})

    async def take(self, connection: HttpConnection, job_id: str) -> None:
        body = orjson.dumps({"story_id": "other", "input": "x"})
        for name, method, path, payload in (
            ("GET /run", "GET", f"/run/{job_id}", None),
            ("POST /run", "POST", "/run", body),
        ):
            started = time.perf_counter()
            status, _ = await connection.request(method, path, payload)
            self.latencies[name].append((time.perf_counter() - started) * 1000)
            self.statuses[name][status] += 1


@dataclass
class Phase:
    name: str
    requests: Requests
    rss_mb: float
    redis_clients: int


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def follow(port: int, job_id: str, opened: list[int], ended: Counter[str]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET /run/{job_id}/events HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n".encode())
        await writer.drain()
        status = int((await reader.readline()).split()[1])
        opened.append(status)
        if status != 200:
            return
        while line := await reader.readline():
            if line.startswith(b"event: complete"):
                ended["complete"] += 1
                return
    finally:
        writer.close()


async def measure(
    stack: Stack, name: str, api_pid: int, job_id: str, *, count: int, until: asyncio.Task[Any] | None
) -> Phase:
    """`count` pairs of requests; with `until`, also as long as it is not done."""
    connection, requests = HttpConnection(stack.api_port), Requests()
    try:
        taken = 0
        while taken < count or (until is not None and not until.done()):
            await requests.take(connection, job_id)
            taken += 1
    finally:
        await connection.close()
    clients = int((await stack.probe.redis.info("clients"))["connected_clients"])
    return Phase(name, requests, rss_mb(api_pid), clients)


async def main(streams: int, runs: int, count: int) -> None:
    async with Stack.open() as stack:
        stack.api_port = free_port()
        env = stack.env(STORYFLOW_MAX_STREAMS_PER_TENANT=str(streams * 2))
        api = stack.children.spawn("api", ["-m", "infra.cli", "api", "--port", str(stack.api_port)], env)
        await stack._wait_healthy(api, stack.api_port)
        load = await run_load(
            stack.api_port, post_runs([run_body(i, tag="streams") for i in range(runs)]), concurrency=16
        )
        ids = job_ids(load)
        opened: list[int] = []
        ended: Counter[str] = Counter()
        followers = [asyncio.create_task(follow(stack.api_port, ids[i % runs], opened, ended)) for i in range(streams)]

        async def all_open() -> bool:
            return len(opened) == streams

        await wait_until(all_open, timeout=120, interval=0.1, what="every stream to open")
        phases = [await measure(stack, "every stream open, waiting", api.process.pid, ids[0], count=count, until=None)]
        worker = stack.children.spawn("worker", ["-m", "infra.cli", "worker"], stack.env(STORYFLOW_ECHO_DELAY="0.05"))
        started = time.perf_counter()
        streaming = asyncio.create_task(asyncio.wait_for(asyncio.gather(*followers), timeout=STREAMS_TIMEOUT_S))
        phases.append(
            await measure(stack, "streams receiving the runs", api.process.pid, ids[0], count=count, until=streaming)
        )
        await streaming
        streamed_s = time.perf_counter() - started
        stack.children.stop([worker, api])
    report(streams, runs, Counter(opened), phases, ended["complete"], streamed_s)


def report(
    streams: int, runs: int, opened: Counter[int], phases: list[Phase], complete: int, streamed_s: float
) -> None:
    print(f"{streams} event streams on one API process, following {runs} runs; stream answers {dict(opened)}\n")
    print("| phase | request | status codes | p50 ms | p99 ms | API RSS | Redis clients |")
    print("|---|---|---|---|---|---|---|")
    for phase in phases:
        for name, statuses in phase.requests.statuses.items():
            p50, p99 = (percentile(phase.requests.latencies[name], pct) for pct in (50, 99))
            print(
                f"| {phase.name} | {name} | {dict(statuses)} | {p50:.2f} | {p99:.2f}"
                f" | {phase.rss_mb:.0f} MB | {phase.redis_clients} |"
            )
    print(f"\nstreams that saw their run complete: {complete} / {streams} ({streamed_s:.1f} s from the worker's start)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.streams", description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument(
        "--requests", type=int, default=300, help="pairs of GET /run and POST /run per phase (at least)"
    )
    args = parser.parse_args()
    asyncio.run(main(args.streams, args.runs, args.requests))
