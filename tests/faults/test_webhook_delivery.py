"""Webhook deliveries outlive the processes: API and worker killed while a delivery is pending, and a
worker killed in the middle of an attempt."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from infra.embedded_redis import free_port
from tests.conftest import RUN, Processes, wait_for, wait_http_ok
from tests.support.receiver import Receiver
from tests.test_webhooks import SECRET, received

pytestmark = [pytest.mark.timeout(90)]


def hook_env(**extra: str) -> dict[str, str]:
    return {
        "STORYFLOW_WEBHOOK_SECRET": SECRET, "STORYFLOW_WEBHOOK_ALLOW_PRIVATE": "true",
        "STORYFLOW_WEBHOOK_RETRY_BASE": "4", **extra,
    }  # fmt: skip


async def start_api(processes: Processes, port: int) -> str:
    processes.api(port, **hook_env())
    base = f"http://127.0.0.1:{port}"
    await wait_http_ok(f"{base}/healthz")
    return base


async def delivered_state(base: str, job_id: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=base) as http:

        async def delivered() -> dict[str, Any] | None:
            state: dict[str, Any] | None = (await http.get(f"/run/{job_id}")).json()["webhook"]
            return state if state and state["delivered"] else None

        result: dict[str, Any] = await wait_for(delivered, timeout=30)
        return result


async def test_a_pending_delivery_survives_restarts_of_the_api_and_the_worker(
    processes: Processes, receiver: Receiver, redis: Redis
) -> None:
    receiver.statuses = [500]
    port = free_port()
    base = await start_api(processes, port)
    worker = processes.worker(**hook_env())
    async with httpx.AsyncClient(base_url=base) as http:
        job_id = (await http.post("/run", json={**RUN, "webhook": receiver.url})).json()["job_id"]
    await received(receiver, 1, timeout=30)  # attempt 1 got a 500; attempt 2 is due in 2-4 s
    for process in processes.started:
        process.send_signal(signal.SIGKILL)
    await asyncio.to_thread(worker.wait, 10)
    processes.stop_all()
    processes.started.clear()
    base = await start_api(processes, port)
    processes.worker(**hook_env())
    state = await delivered_state(base, job_id)
    assert state["attempts"] == 2 and state["last_status"] == 200
    assert len(receiver.received) == 2
    assert receiver.received[0].headers["webhook-id"] == receiver.received[1].headers["webhook-id"]


async def test_a_worker_killed_mid_attempt_is_followed_by_another_with_the_same_id(
    processes: Processes, receiver: Receiver, redis: Redis
) -> None:
    receiver.hang_paths = {"/hook"}
    base = await start_api(processes, free_port())
    worker = processes.worker(**hook_env(STORYFLOW_WEBHOOK_TIMEOUT="2"))
    async with httpx.AsyncClient(base_url=base) as http:
        job_id = (await http.post("/run", json={**RUN, "webhook": receiver.url})).json()["job_id"]
    await received(receiver, 1, timeout=30)  # the attempt is under way, unanswered
    worker.send_signal(signal.SIGKILL)
    await asyncio.to_thread(worker.wait, 10)
    receiver.hang_paths = set()
    processes.worker(**hook_env(STORYFLOW_WEBHOOK_TIMEOUT="2"))
    state = await delivered_state(base, job_id)  # once the dead worker's claim has run out
    assert state["last_status"] == 200
    ids = {r.headers["webhook-id"] for r in receiver.received}
    assert len(receiver.received) == 2 and len(ids) == 1
