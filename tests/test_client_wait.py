"""The Python client's wait keeps its timeout even while events keep coming (real API and worker)."""

from __future__ import annotations

import asyncio
import time

import pytest

from client import StoryflowClient, WaitTimeout
from infra.embedded_redis import free_port
from tests.conftest import Processes, wait_http_ok

pytestmark = [pytest.mark.timeout(60)]


def timed_wait(base: str, job_id: str, timeout: float) -> float:
    with StoryflowClient(base) as client:
        started = time.monotonic()
        with pytest.raises(WaitTimeout):
            client.wait(job_id, timeout=timeout)
        return time.monotonic() - started


async def test_wait_ends_on_time_while_tokens_stream(processes: Processes) -> None:
    port = free_port()
    processes.api(port)
    processes.worker(STORYFLOW_ECHO_DELAY="20", STORYFLOW_TOKEN_FLUSH_MS="0")  # a word every ~0.5 s
    base = f"http://127.0.0.1:{port}"
    await wait_http_ok(f"{base}/healthz")
    with StoryflowClient(base) as client:
        job_id = client.submit(story_id="s1", input=" ".join(["word"] * 40)).job_id
        assert job_id is not None
    for timeout in (0.3, 0.7, 1.2):
        took = await asyncio.to_thread(timed_wait, base, job_id, timeout)
        assert took < timeout + 0.25, (timeout, took)
