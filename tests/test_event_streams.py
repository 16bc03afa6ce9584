"""Many open event streams on one API process: they hold no pooled connection each, so every tenant's
other requests keep being answered; one tenant cannot take them all."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest

from infra.embedded_redis import free_port
from tests.conftest import Processes, wait_for, wait_http_ok

pytestmark = [pytest.mark.timeout(120)]
KEYS = "acme:acme-key-123,evil:evil-key-123"
ACME, EVIL = {"X-API-Key": "acme-key-123"}, {"X-API-Key": "evil-key-123"}


@pytest.fixture
async def api(processes: Processes) -> AsyncIterator[str]:
    port = free_port()
    # A pool of 50 connections: 120 streams would exhaust it if each held one.
    processes.api(
        port, STORYFLOW_API_KEYS=KEYS, STORYFLOW_MAX_STREAMS_PER_TENANT="150", STORYFLOW_REDIS_MAX_CONNECTIONS="50"
    )
    base = f"http://127.0.0.1:{port}"
    await wait_http_ok(f"{base}/healthz")
    yield base


async def hold_stream(http: httpx.AsyncClient, job_id: str, headers: dict[str, str], opened: list[int]) -> list[str]:
    names: list[str] = []
    async with http.stream("GET", f"/run/{job_id}/events", headers=headers) as response:
        opened.append(response.status_code)
        async for line in response.aiter_lines():
            if line.startswith("event:"):
                names.append(line[6:].strip())
    return names


async def test_open_streams_leave_the_pool_to_other_requests(api: str, processes: Processes) -> None:
    limits = httpx.Limits(max_connections=400, max_keepalive_connections=400)
    async with httpx.AsyncClient(base_url=api, timeout=60, limits=limits) as http:
        job_id = (await http.post("/run", json={"story_id": "s1", "input": "x"}, headers=ACME)).json()["job_id"]
        opened: list[int] = []
        streams = [asyncio.create_task(hold_stream(http, job_id, ACME, opened)) for _ in range(120)]

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
        assert all(names[-1] == "complete" and names[0] == "started" for names in ends)
        assert len({tuple(names) for names in ends}) == 1


async def test_one_tenant_cannot_hold_more_streams_than_its_share(processes: Processes) -> None:
    port = free_port()
    processes.api(port, STORYFLOW_API_KEYS=KEYS, STORYFLOW_MAX_STREAMS_PER_TENANT="3")
    base = f"http://127.0.0.1:{port}"
    await wait_http_ok(f"{base}/healthz")
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        job_id = (await http.post("/run", json={"story_id": "s1", "input": "x"}, headers=ACME)).json()["job_id"]
        theirs = (await http.post("/run", json={"story_id": "s1", "input": "x"}, headers=EVIL)).json()["job_id"]
        opened: list[int] = []
        held = [asyncio.create_task(hold_stream(http, job_id, ACME, opened)) for _ in range(3)]

        async def three_open() -> bool:
            return len(opened) == 3

        await wait_for(three_open)
        refused = await http.get(f"/run/{job_id}/events", headers=ACME)
        assert refused.status_code == 429 and refused.headers["retry-after"]
        # Another tenant is not affected.
        async with http.stream("GET", f"/run/{theirs}/events", headers=EVIL) as response:
            assert response.status_code == 200
        # A client that goes away gives its slot back.
        held[0].cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await held[0]

        async def slot_back() -> bool:
            async with http.stream("GET", f"/run/{job_id}/events", headers=ACME) as response:
                return response.status_code == 200

        await wait_for(slot_back, timeout=10, interval=0.2)
        for task in held[1:]:
            task.cancel()
