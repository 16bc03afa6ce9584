"""Many open event streams on one API process: they hold no pooled connection each, so every tenant's
other requests keep being answered; one tenant cannot take them all; every stream still gets exactly
its run's events, across resumes and a lost reader connection."""

from __future__ import annotations

import asyncio
import contextlib

import httpx
import pytest
from redis.asyncio import Redis

from api.event_fanout import READER_NAME, EventFanout
from infra import keys
from infra.embedded_redis import free_port
from infra.redis import create_redis
from tests.conftest import Processes, wait_for, wait_http_ok

pytestmark = [pytest.mark.timeout(120)]
KEYS = "acme:acme-key-123,evil:evil-key-123"
ACME, EVIL = {"X-API-Key": "acme-key-123"}, {"X-API-Key": "evil-key-123"}
WAIT_S = 5  # far below the reader's block of 30 s
LONG_INPUT = " ".join(f"word{i}" for i in range(40))  # streamed word by word: many token events


async def start_api(processes: Processes, **env: str) -> str:
    port = free_port()
    processes.api(port, STORYFLOW_API_KEYS=KEYS, **env)
    base = f"http://127.0.0.1:{port}"
    await wait_http_ok(f"{base}/healthz")
    return base


@pytest.fixture
async def small_pool_api(processes: Processes) -> str:
    # A pool of 50 connections: 120 streams would exhaust it if each held one.
    return await start_api(processes, STORYFLOW_MAX_STREAMS_PER_TENANT="150", STORYFLOW_REDIS_MAX_CONNECTIONS="50")


@pytest.fixture
async def three_streams_api(processes: Processes) -> str:
    return await start_api(processes, STORYFLOW_MAX_STREAMS_PER_TENANT="3")


async def submit(http: httpx.AsyncClient, headers: dict[str, str], text: str = "x") -> str:
    response = await http.post("/run", json={"story_id": "s1", "input": text}, headers=headers)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["job_id"]
    return job_id


async def read_stream(
    http: httpx.AsyncClient,
    job_id: str,
    headers: dict[str, str],
    *,
    last_id: str | None = None,
    opened: list[int] | None = None,
    stop_after: int = 0,
) -> list[tuple[str, str]]:
    """(id, event name) of each event, to the stream's end or the first `stop_after`."""
    events: list[tuple[str, str]] = []
    resume = {"Last-Event-ID": last_id} if last_id else {}
    async with http.stream("GET", f"/run/{job_id}/events", headers={**headers, **resume}) as response:
        if opened is not None:
            opened.append(response.status_code)
        event_id = ""
        async for line in response.aiter_lines():
            if line.startswith("id:"):
                event_id = line[3:].strip()
            elif line.startswith("event:"):
                events.append((event_id, line[6:].strip()))
                if len(events) == stop_after:
                    break
    return events


async def stored_events(redis: Redis, tenant: str, job_id: str) -> list[tuple[str, str]]:
    entries = await redis.xrange(keys.run_events(tenant, job_id))
    return [(entry_id.decode(), fields[b"event"].decode()) for entry_id, fields in entries]


async def test_open_streams_leave_the_pool_to_other_requests(small_pool_api: str, processes: Processes) -> None:
    limits = httpx.Limits(max_connections=400, max_keepalive_connections=400)
    async with httpx.AsyncClient(base_url=small_pool_api, timeout=60, limits=limits) as http:
        job_id = await submit(http, ACME)
        opened: list[int] = []
        streams = [asyncio.create_task(read_stream(http, job_id, ACME, opened=opened)) for _ in range(120)]

        async def all_open() -> bool:
            return len(opened) == 120

        await wait_for(all_open, timeout=60)
        assert set(opened) == {200}
        # With every stream open, both tenants' other requests are answered.
        for headers in (ACME, EVIL):
            submitted = await http.post("/run", json={"story_id": "s2", "input": "y"}, headers=headers)
            assert submitted.status_code == 202, submitted.text
            assert (await http.get(f"/run/{submitted.json()['job_id']}", headers=headers)).status_code == 200
        processes.worker()  # now the run happens, and every stream gets all of it, to the end
        ends = await asyncio.gather(*streams)
    names = [name for _, name in ends[0]]
    assert names[0] == "started" and names[-1] == "complete"
    assert all(events == ends[0] for events in ends)


async def test_one_tenant_cannot_hold_more_streams_than_its_share(three_streams_api: str) -> None:
    async with httpx.AsyncClient(base_url=three_streams_api, timeout=30) as http:
        job_id, theirs = await submit(http, ACME), await submit(http, EVIL)
        opened: list[int] = []
        held = [asyncio.create_task(read_stream(http, job_id, ACME, opened=opened)) for _ in range(3)]

        async def three_open() -> bool:
            return len(opened) == 3

        await wait_for(three_open)
        refused = await http.get(f"/run/{job_id}/events", headers=ACME)
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0
        assert "event streams" in refused.json()["detail"]
        # Another tenant is not affected.
        async with http.stream("GET", f"/run/{theirs}/events", headers=EVIL) as response:
            assert response.status_code == 200
        for task in held:
            task.cancel()


async def test_a_client_that_goes_away_gives_its_slot_back(three_streams_api: str) -> None:
    async with httpx.AsyncClient(base_url=three_streams_api, timeout=30) as http:
        job_id = await submit(http, ACME)
        # Gone at once, before any event: the slot comes back anyway (three times over, or the fourth is refused).
        for _ in range(3):
            async with http.stream("GET", f"/run/{job_id}/events", headers=ACME) as response:
                assert response.status_code == 200
        opened: list[int] = []
        held = [asyncio.create_task(read_stream(http, job_id, ACME, opened=opened)) for _ in range(3)]

        async def three_open() -> bool:
            return opened == [200, 200, 200]

        await wait_for(three_open)
        # Gone in the middle of a stream.
        held[0].cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await held[0]

        async def slot_back() -> bool:
            async with http.stream("GET", f"/run/{job_id}/events", headers=ACME) as response:
                return response.status_code == 200

        await wait_for(slot_back, timeout=10, interval=0.2)
        for task in held[1:]:
            task.cancel()


async def test_last_event_id_resumes_exactly(processes: Processes, redis: Redis) -> None:
    base = await start_api(processes)
    processes.worker(STORYFLOW_ECHO_DELAY="0.5", STORYFLOW_TOKEN_FLUSH_MS="20")
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        job_id = await submit(http, ACME, LONG_INPUT)
        # Other streams of the same run stay open meanwhile, each at its own place in it.
        others = [asyncio.create_task(read_stream(http, job_id, ACME)) for _ in range(3)]
        first = await read_stream(http, job_id, ACME, stop_after=5)
        rest = await read_stream(http, job_id, ACME, last_id=first[-1][0])
        whole = await asyncio.gather(*others)
        stored = await stored_events(redis, "acme", job_id)
        assert first + rest == stored and rest[-1][1] == "complete"
        assert all(events == stored for events in whole)
        # After the end: from the middle, the rest exactly; from the end, 204 (do not reconnect).
        middle = stored[len(stored) // 2][0]
        assert await read_stream(http, job_id, ACME, last_id=middle) == stored[len(stored) // 2 + 1 :]
        done = await http.get(f"/run/{job_id}/events", headers={**ACME, "Last-Event-ID": stored[-1][0]})
        assert done.status_code == 204


async def kill_event_reader(redis: Redis) -> bool:
    readers = [client["id"] for client in await redis.client_list() if client["name"].startswith(READER_NAME)]
    for reader in readers:
        await redis.client_kill_filter(_id=reader)
    return bool(readers)


async def test_streams_go_on_from_their_last_event_when_the_reader_loses_redis(
    processes: Processes, redis: Redis
) -> None:
    base = await start_api(processes)
    processes.worker(STORYFLOW_ECHO_DELAY="1.0", STORYFLOW_TOKEN_FLUSH_MS="20")
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        job_id = await submit(http, ACME, LONG_INPUT)
        streams = [asyncio.create_task(read_stream(http, job_id, ACME)) for _ in range(5)]
        for _ in range(2):
            await wait_for(lambda: kill_event_reader(redis))
            await asyncio.sleep(0.3)  # let some events be appended while the reader comes back
        received = await asyncio.gather(*streams)
        stored = await stored_events(redis, "acme", job_id)
    assert stored[-1][1] == "complete"
    assert all(events == stored for events in received)


async def test_a_new_stream_is_served_at_once_while_the_reader_blocks(redis_url: str, redis: Redis) -> None:
    # A read that blocked for 30 s without the new stream would show; it is woken instead, also after
    # its connection was lost while reading or while idle (and made again, under a new client id).
    pool = create_redis(redis_url, max_connections=4)
    fanout = EventFanout(redis_url, pool, max_per_tenant=10, block_s=30)
    fanout.start()
    await redis.xadd("history", {"event": "complete", "data": "{}"})

    async def served_at_once() -> None:
        await wait_for(lambda: reader_blocked(redis))
        subscription = fanout.subscribe("t", "history", "0-0")
        assert subscription is not None
        assert (await asyncio.wait_for(subscription.entries.get(), WAIT_S))[1] == "complete"
        fanout.unsubscribe(subscription)

    try:
        quiet = fanout.subscribe("t", "quiet", "0-0")
        assert quiet is not None
        await served_at_once()
        await wait_for(lambda: kill_event_reader(redis))  # lost while reading
        await served_at_once()
        fanout.unsubscribe(quiet)
        await redis.xadd("quiet", {"event": "x", "data": "{}"})  # ends the read: the reader has nothing to follow

        async def idle() -> bool:
            return not await reader_blocked(redis)

        await wait_for(idle)
        await kill_event_reader(redis)  # lost while idle, if it kept a connection then
        fanout.subscribe("t", "quiet", "0-0")
        await served_at_once()
    finally:
        await fanout.stop()
        await pool.aclose()


async def reader_blocked(redis: Redis) -> bool:
    clients = await redis.client_list()
    return any(client["name"].startswith(READER_NAME) and "b" in client["flags"] for client in clients)
