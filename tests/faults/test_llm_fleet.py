"""The fleet's LLM rate limits with two real worker processes, counted at a fake provider on loopback."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.conftest import Processes, until_status, wait_for
from tests.support.fake_openai import FakeOpenAI, Reply, fake_openai_fixture, fake_openai_server  # noqa: F401

pytestmark = [pytest.mark.timeout(90)]
WINDOW_S = 2.0


def fleet_env(fake: FakeOpenAI, **limits: str) -> dict[str, str]:
    return {
        "STORYFLOW_LLM_PROVIDER": "openai", "STORYFLOW_LLM_BASE_URL": fake.base_url, "STORYFLOW_LLM_MODEL": "m",
        "STORYFLOW_LLM_RATE_WINDOW": str(WINDOW_S), "STORYFLOW_LLM_RETRIES": "5", **limits,
    }  # fmt: skip


def most_in_any_window(times: list[float], window: float) -> int:
    times = sorted(times)
    return max((sum(1 for t in times[i:] if t - start < window) for i, start in enumerate(times)), default=0)


async def submit(client: httpx.AsyncClient, count: int, tag: str) -> list[str]:
    return [
        (await client.post("/run", json={"story_id": f"{tag}-{n}", "input": f"call {n}"})).json()["job_id"]
        for n in range(count)
    ]


async def test_two_workers_together_never_pass_the_rpm(
    client: httpx.AsyncClient, processes: Processes, fake_openai: FakeOpenAI
) -> None:
    for _ in range(2):
        processes.worker(**fleet_env(fake_openai, STORYFLOW_LLM_RPM="10"))
    job_ids = await submit(client, 15, "rpm")  # 30 calls: three windows' worth
    for job_id in job_ids:
        assert (await until_status(client, job_id, "complete", "failed", timeout=30))["status"] == "complete"
    arrivals = [request.at for request in fake_openai.requests]
    assert len(arrivals) == 30
    assert most_in_any_window(arrivals, WINDOW_S) <= 10
    assert len({request.peer for request in fake_openai.requests}) >= 2  # both workers called


async def test_a_429_with_retry_after_pauses_both_workers(
    client: httpx.AsyncClient, processes: Processes, fake_openai: FakeOpenAI
) -> None:
    for _ in range(2):
        processes.worker(**fleet_env(fake_openai, STORYFLOW_LLM_RPM="1000"))
    fake_openai.plan(Reply.status(429, retry_after="2"))
    first = await submit(client, 1, "first")

    async def refused() -> bool:
        return len(fake_openai.requests) >= 1

    await wait_for(refused)
    await asyncio.sleep(0.3)  # the 429 is answered and the pause set
    later = await submit(client, 6, "later")
    for job_id in first + later:
        assert (await until_status(client, job_id, "complete", "failed", timeout=30))["status"] == "complete"
    paused_at = fake_openai.requests[0].at
    after = [request.at - paused_at for request in fake_openai.requests[1:]]
    assert min(after) >= 1.9, after  # no worker sent anything while the pause lasted
    assert len({request.peer for request in fake_openai.requests[1:]}) >= 2
