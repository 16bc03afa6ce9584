"""Many open event streams on one API process, while other requests go on.

    .venv/bin/python -m bench.streams [--streams 2000] [--runs 200]

One API process on a private Redis; `--streams` SSE connections (raw sockets) follow `--runs`
queued runs. With every stream open, it measures GET /run and POST /run (status codes, p50 and
p99), the API's RSS and Redis' connected clients; then one worker runs the runs and it counts the
streams that saw their run's `complete`. Before the shared event reader, each stream held a pooled
connection: at about 510 streams every other request answered 503.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter

import orjson

from bench.harness import HttpConnection, Stack, job_ids, percentile, post_runs, run_body, run_load, wait_until
from infra.embedded_redis import free_port


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def follow(port: int, job_id: str, opened: list[int], ended: Counter[str]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /run/{job_id}/events HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n".encode())
    await writer.drain()
    status = int((await reader.readline()).split()[1])
    opened.append(status)
    while line := await reader.readline():
        if line.startswith(b"event: complete"):
            ended["complete"] += 1
            break
    writer.close()


async def timed(connection: HttpConnection, method: str, path: str, body: bytes | None) -> tuple[int, float]:
    started = time.perf_counter()
    status, _ = await connection.request(method, path, body)
    return status, (time.perf_counter() - started) * 1000


async def measure_requests(port: int, job_id: str, count: int) -> dict[str, tuple[Counter[int], float, float]]:
    connection = HttpConnection(port)
    results: dict[str, tuple[Counter[int], float, float]] = {}
    body = orjson.dumps({"story_id": "other", "input": "x"})
    for name, method, path, payload in (
        ("GET /run", "GET", f"/run/{job_id}", None),
        ("POST /run", "POST", "/run", body),
    ):
        answers = [await timed(connection, method, path, payload) for _ in range(count)]
        times = [ms for _, ms in answers]
        results[name] = (Counter(status for status, _ in answers), percentile(times, 50), percentile(times, 99))
    await connection.close()
    return results


async def main(streams: int, runs: int, requests: int) -> None:
    async with Stack.open() as stack:
        port = free_port()
        env = stack.env(STORYFLOW_MAX_STREAMS_PER_TENANT=str(streams * 2))
        api = stack.children.spawn("api", ["-m", "infra.cli", "api", "--port", str(port)], env)
        await stack._wait_healthy(api, port)
        load = await run_load(port, post_runs([run_body(i, tag="streams") for i in range(runs)]), concurrency=16)
        ids = job_ids(load)
        opened: list[int] = []
        ended: Counter[str] = Counter()
        followers = [asyncio.create_task(follow(port, ids[i % runs], opened, ended)) for i in range(streams)]

        async def all_open() -> bool:
            return len(opened) == streams

        await wait_until(all_open, timeout=120, interval=0.1, what="every stream to open")
        rss = rss_mb(api.process.pid)
        clients = (await stack.probe.redis.info("clients"))["connected_clients"]
        measured = await measure_requests(port, ids[0], requests)
        worker = stack.children.spawn("worker", ["-m", "infra.cli", "worker"], stack.env(STORYFLOW_ECHO_DELAY="0.05"))
        await asyncio.wait_for(asyncio.gather(*followers), timeout=300)
        stack.children.stop([worker, api])
    print(f"| {streams} streams open on one API process ({Counter(opened)}) | |")
    print("|---|---|")
    for name, (statuses, p50, p99) in measured.items():
        print(f"| {name}: status codes | {dict(statuses)} |")
        print(f"| {name}: p50 / p99 ms | {p50:.2f} / {p99:.2f} |")
    print(f"| API RSS with every stream open | {rss:.0f} MB |")
    print(f"| Redis connected clients (API, probe, reader) | {clients} |")
    print(f"| streams that saw their run complete | {ended['complete']} / {streams} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.streams", description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    asyncio.run(main(args.streams, args.runs, args.requests))
