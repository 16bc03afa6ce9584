"""Server time of the dashboard's runs page and run page with 10000 runs in Redis, beside the JSON API's
equivalents on the same app and Redis.

    .venv/bin/python -m bench.dashboard [--runs 10000] [--requests 200]

The app runs in this process (httpx's ASGI transport: no sockets, so the time is the server's own:
routing, Redis reads, rendering) against a private Redis. `--runs` runs are queued as one batch (no
worker), one more is run to completion (its page has steps and outputs). Each page is requested
`--requests` times one after another; the baseline is `GET /runs?limit=100` (what the runs page shows)
and `GET /run/{id}`.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import httpx

from api.main import create_app
from bench.harness import percentile
from infra.embedded_redis import EmbeddedRedis
from infra.settings import Settings
from worker.main import build_worker


async def timed(client: httpx.AsyncClient, path: str, count: int) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        response = await client.get(path)
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, (path, response.status_code)
    return times


async def main(runs: int, requests: int) -> None:
    with tempfile.TemporaryDirectory() as folder, EmbeddedRedis(Path(folder)) as redis:
        settings = Settings(redis_url=redis.url, max_queued_runs=10**8, log_level="WARNING")
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://bench", timeout=120) as client:
                done = (await client.post("/run", json={"input": "A story for the bench.", "story_id": "b"})).json()
                worker = build_worker(settings, burst=True)
                await worker.main()
                await worker.close()
                batch = [{"input": f"run {i}", "story_id": f"s-{i % 1000}"} for i in range(runs)]
                assert (await client.post("/batches", json={"runs": batch})).status_code == 201
                pages = {
                    "GET /ui/runs (100 newest of the tenant's runs)": "/ui/runs",
                    "baseline GET /runs?limit=100": "/runs?limit=100",
                    "GET /ui/runs/{id} (a complete 2-step run)": f"/ui/runs/{done['job_id']}",
                    "baseline GET /run/{id}": f"/run/{done['job_id']}",
                }
                for path in pages.values():
                    await timed(client, path, 10)  # warm up
                rows = [(name, await timed(client, path, requests)) for name, path in pages.items()]
    print(f"| {runs + 1} runs in Redis, {requests} requests each | p50 ms | p95 ms | p99 ms |\n|---|---:|---:|---:|")
    for name, times in rows:
        print(f"| {name} | {percentile(times, 50):.2f} | {percentile(times, 95):.2f} | {percentile(times, 99):.2f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.dashboard", description=__doc__)
    parser.add_argument("--runs", type=int, default=10000)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    asyncio.run(main(args.runs, args.requests))
