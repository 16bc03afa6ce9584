"""What a run leaves in Redis after its record expires: nothing in the indexes, no story keys; and a
page of GET /runs reads a bounded number of entries, however many stale ones lie in its way."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from redis.asyncio import Redis

from infra import keys
from tests.conftest import api_client, make_settings, until_status, wait_for


async def test_expired_runs_leave_nothing_behind_but_memory(
    redis_url: str, redis: Redis, background_worker_factory: Any
) -> None:
    settings = make_settings(redis_url, result_ttl=1)
    await background_worker_factory(settings)
    async for client in api_client(settings):
        job_ids = []
        for story in range(5):
            for n in range(3):
                response = await client.post("/run", json={"story_id": f"s{story}", "input": f"run {n}"})
                job_ids.append(response.json()["job_id"])
        for job_id in job_ids:
            await until_status(client, job_id, "complete")

        async def only_memory_left() -> bool:
            left = {key.decode() async for key in redis.scan_iter("sf:t:default:*")}
            return all(":mem:" in key for key in left) and not await redis.zcard(keys.EXPIRING)

        await wait_for(only_memory_left, timeout=20, interval=0.2)  # a worker's chores, every heartbeat
        assert (await client.get("/runs")).json() == []
        assert (await client.get("/memory/s0")).status_code == 200  # memory and documents stay


async def test_a_page_reads_a_bounded_number_of_entries(redis_url: str, redis: Redis) -> None:
    async for client in api_client(make_settings(redis_url)):
        live = (await client.post("/run", json={"story_id": "s", "input": "x"})).json()["job_id"]
        stale = {uuid.uuid4().hex: 10**12 + i for i in range(5000)}  # newer than the live run, long expired
        stale_index = keys.runs_index("default")
        await redis.zadd(stale_index, {live: 1})
        await redis.zadd(stale_index, stale)
        before = await hmgets(redis)
        page = await client.get("/runs", params={"limit": 1})
        assert page.status_code == 200 and page.json() == []  # the page ended early...
        assert page.headers["x-next-cursor"]  # ... with a cursor to go on
        assert await hmgets(redis) - before <= 20 * 1 + 2  # record reads: bounded by the page, not the index
        assert await redis.zcard(stale_index) == 5001 - 20  # the stale entries it met are gone
        runs = await walk(client)
        assert [run["job_id"] for run in runs] == [live]
        assert await redis.zcard(stale_index) == 1


async def hmgets(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_hmget", {}).get("calls", 0))


async def walk(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    runs, cursor = [], None
    while True:
        params: dict[str, Any] = {"limit": 50} | ({"cursor": cursor} if cursor else {})
        page = await client.get("/runs", params=params)
        runs += page.json()
        cursor = page.headers.get("x-next-cursor")
        if not cursor:
            return runs
