"""What runs leave in Redis once their records expire, and what a page of GET /runs costs.

    .venv/bin/python -m bench.retention [--runs 5000] [--stale 50000]

One API and one worker on a private Redis, STORYFLOW_RESULT_TTL=2. It measures Redis' used_memory
before `--runs` runs (one story per 5 runs), once they are complete, and once their records have
expired and a worker's chores ran; then it puts `--stale` expired entries in the tenant's run index
(as the index kept them before) and times GET /runs?limit=1 over them.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

from bench.harness import TENANT, HttpConnection, Stack, percentile, post_runs, run_load, wait_until
from infra import keys
from infra.embedded_redis import free_port

TTL_S = 2


async def used_memory(stack: Stack) -> int:
    return int((await stack.probe.redis.info("memory"))["used_memory"])


async def main(runs: int, stale: int) -> None:
    async with Stack.open() as stack:
        port = free_port()
        env = stack.env(STORYFLOW_RESULT_TTL=str(TTL_S))
        api = stack.children.spawn("api", ["-m", "infra.cli", "api", "--port", str(port)], env)
        worker = stack.children.spawn("worker", ["-m", "infra.cli", "worker"], env)
        await stack._wait_healthy(api, port)
        empty = await used_memory(stack)
        bodies = [{"story_id": f"story-{i // 5}", "input": f"run {i}"} for i in range(runs)]
        (await run_load(port, post_runs(bodies), concurrency=32)).expect(202, "submitting")
        await stack.probe.wait_drained(timeout=300)

        async def all_finished() -> bool:
            return not await stack.probe.redis.scard(keys.active_runs(TENANT))  # type: ignore[misc]

        await wait_until(all_finished, timeout=300, interval=0.2, what="every run to finish")
        finished = await used_memory(stack)

        async def forgotten() -> bool:
            return not await stack.probe.redis.zcard(keys.EXPIRING) and not await stack.probe.redis.zcard(
                keys.runs_index(TENANT)
            )

        await wait_until(forgotten, timeout=TTL_S + 30, interval=0.2, what="the expired runs to leave the indexes")
        expired = await used_memory(stack)
        left = [key.decode() async for key in stack.probe.redis.scan_iter("sf:t:*")]
        await stack.probe.redis.zadd(keys.runs_index(TENANT), {uuid.uuid4().hex: 10**12 + i for i in range(stale)})
        connection = HttpConnection(port)
        times = []
        for _ in range(20):
            started = time.perf_counter()
            status, _ = await connection.request("GET", "/runs?limit=1")
            times.append((time.perf_counter() - started) * 1000)
            assert status == 200
        await connection.close()
        stack.children.stop([worker, api])
    memory_keys = sum(":mem:" in key for key in left)
    mb = f"{empty / 1e6:.1f} / {finished / 1e6:.1f} / {expired / 1e6:.1f} MB"
    rows = [
        (f"{runs} runs of {runs // 5} stories, RESULT_TTL={TTL_S} s", ""),
        ("Redis used_memory: before / runs finished / records expired", mb),
        ("bytes left per run after expiry (story memory included)", f"{(expired - empty) / runs:.0f}"),
        ("tenant keys left: story memory / other", f"{memory_keys} / {len(left) - memory_keys}"),
        (
            f"GET /runs?limit=1 over {stale} stale entries: p50 / max ms",
            f"{percentile(times, 50):.2f} / {max(times):.2f}",
        ),
    ]
    for number, (name, value) in enumerate(rows):
        print(f"| {name} | {value} |")
        if number == 0:
            print("|---|---|")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.retention", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5000)
    parser.add_argument("--stale", type=int, default=50000)
    args = parser.parse_args()
    asyncio.run(main(args.runs, args.stale))
