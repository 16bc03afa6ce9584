"""Webhook delivery and batch submission, each beside a baseline on the same Redis in the same run.

    .venv/bin/python -m bench.webhooks [--runs 1000] [--batch 10000]

One API and one worker process on a private Redis. A receiver in this process (a lean asyncio HTTP
server on loopback) notes when each `run.complete` arrives.
- Delivery latency: from the run's `finished_at` to the webhook's arrival, beside the baseline of the
  same runs' completion notice on Redis pub/sub (what `POST /run?wait` waits on), received here.
- Deliveries/s: `--runs` runs submitted at once; deliveries per second from the first run finished to
  the last webhook received, beside runs finished per second over the same runs.
- POST /batches: `--batch` runs in one request (no worker running), beside the same runs sent as
  POST /runs/batch requests of 1000.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import time
from datetime import datetime
from typing import Any

import orjson

from bench.harness import HttpConnection, Stack, percentile, post_runs, run_load, wait_until
from infra import keys
from infra.embedded_redis import free_port

SECRET = "whsec_" + base64.b64encode(b"storyflow-bench-webhook-secret!!").decode()


class Receiver:
    """Answers 200 to every POST at once and notes (job_id -> arrival time) of run events."""

    def __init__(self) -> None:
        self.arrivals: dict[str, float] = {}
        self.finished_at: dict[str, float] = {}
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                body = await reader.readexactly(length)
                arrived = time.time()
                event = orjson.loads(body)
                if event["type"] == "run.complete":
                    data = event["data"]
                    self.arrivals[data["job_id"]] = arrived
                    self.finished_at[data["job_id"]] = datetime.fromisoformat(data["finished_at"]).timestamp()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


async def listen_finished(stack: Stack, seen: dict[str, float], ready: asyncio.Event) -> None:
    """The baseline: completion notices on Redis pub/sub, noted (job_id -> arrival time)."""
    pubsub = stack.probe.redis.pubsub()
    await pubsub.subscribe(keys.FINISHED_CHANNEL)
    ready.set()
    try:
        async for message in pubsub.listen():
            if message["type"] == "message":
                seen[message["data"].decode().split(":", 1)[1]] = time.time()
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]


def ms(values: list[float]) -> str:
    return f"{percentile(values, 50) * 1000:.1f} / {percentile(values, 99) * 1000:.1f}"


async def deliveries(stack: Stack, runs: int) -> list[tuple[str, str]]:
    receiver = Receiver()
    hook = f"http://127.0.0.1:{await receiver.start()}/hook"
    port = free_port()
    env = stack.env(STORYFLOW_WEBHOOK_SECRET=SECRET, STORYFLOW_WEBHOOK_ALLOW_PRIVATE="true")
    api = stack.children.spawn("api", ["-m", "infra.cli", "api", "--port", str(port)], env)
    worker = stack.children.spawn("worker", ["-m", "infra.cli", "worker"], env)
    await stack._wait_healthy(api, port)
    notices: dict[str, float] = {}
    ready = asyncio.Event()
    listener = asyncio.create_task(listen_finished(stack, notices, ready))
    await ready.wait()
    bodies = [{"story_id": f"story-{i}", "input": f"run {i}", "webhook": hook} for i in range(runs)]
    result = await run_load(port, post_runs(bodies), concurrency=32)
    result.expect(202, "submitting")

    async def all_delivered() -> bool:
        return len(receiver.arrivals) >= runs and len(notices) >= runs

    await wait_until(all_delivered, timeout=300, interval=0.1, what="every webhook")
    listener.cancel()
    stack.children.stop([worker, api])
    assert receiver.server is not None
    receiver.server.close()
    finished = receiver.finished_at
    webhook = [receiver.arrivals[j] - finished[j] for j in finished]
    baseline = [notices[j] - finished[j] for j in finished if j in notices]
    first = min(finished.values())
    delivered_s = max(receiver.arrivals.values()) - first
    finished_s = max(finished.values()) - first
    return [
        (f"{runs} runs with a webhook, one API and one worker", ""),
        ("after finished_at: webhook received, p50 / p99 ms", ms(webhook)),
        ("baseline, pub/sub completion notice received, p50 / p99 ms", ms(baseline)),
        ("deliveries/s (first run finished to last webhook)", f"{runs / delivered_s:.0f}"),
        ("baseline, runs finished/s over the same runs", f"{runs / finished_s:.0f}"),
        ("ratio deliveries/s to runs finished/s", f"{finished_s / delivered_s:.2f}"),
    ]


async def batch_submission(stack: Stack, size: int) -> list[tuple[str, str]]:
    port = free_port()
    env = stack.env(STORYFLOW_MAX_QUEUED_RUNS="100000000")
    api = stack.children.spawn("api", ["-m", "infra.cli", "api", "--port", str(port)], env)
    await stack._wait_healthy(api, port)
    runs = [{"story_id": f"s-{i % 500}", "input": f"run {i}"} for i in range(size)]
    connection = HttpConnection(port)
    started = time.perf_counter()
    status, body = await connection.request("POST", "/batches", orjson.dumps({"runs": runs}))
    batches_s = time.perf_counter() - started
    await connection.close()
    assert status == 201, body[:300]
    chunks = [runs[i : i + 1000] for i in range(0, size, 1000)]
    started = time.perf_counter()
    result = await run_load(port, [("POST", "/runs/batch", orjson.dumps({"runs": c})) for c in chunks], concurrency=1)
    chunked_s = time.perf_counter() - started
    result.expect(200, "POST /runs/batch")
    stack.children.stop([api])
    return [
        (f"POST /batches with {size} runs (one request, no worker)", f"{size / batches_s:.0f} runs/s"),
        ("baseline, POST /runs/batch in requests of 1000, one after another", f"{size / chunked_s:.0f} runs/s"),
        ("ratio", f"{chunked_s / batches_s:.2f}"),
    ]


async def main(runs: int, batch: int) -> None:
    rows: list[tuple[str, Any]] = []
    async with Stack.open() as stack:
        rows += await deliveries(stack, runs)
        await stack.probe.redis.flushdb()
        rows += await batch_submission(stack, batch)
    print("| measure | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.webhooks", description=__doc__)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=10000)
    args = parser.parse_args()
    asyncio.run(main(args.runs, args.batch))
