"""LLM-bound load against a provider with a rate limit, with and without the fleet's limiter; and
what streaming tokens costs.

    .venv/bin/python -m bench.llm_limits [--calls 2000] [--limit 600] [--window 10]

Limits: 2 worker processes, a loopback OpenAI-compatible provider (tests/support/fake_openai.py,
50 ms a call) that accepts `--limit` calls per `--window` seconds and answers 429 with Retry-After
above it; `--calls` calls (two a run). Run twice on the same Redis: without storyflow's limiter, and
with STORYFLOW_LLM_RPM = the provider's limit per the same window. Reported: calls/s achieved as a
share of the provider's limit, and 429s as a share of calls.

Streaming: 50 runs of the echo provider (200 words each, 1 s a call, then 0.25 s: 200 and 800
tokens/s), flushed every 50 ms, one SSE client per run. Reported: Redis commands per 1000 streamed
tokens (token events are one XADD each) and the time from a token event's append to the client
(p50, p99); a token waits at most one flush interval before its append.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import deque
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from bench.harness import TENANT, Stack, percentile, post_runs, run_load, wait_until
from infra import keys
from tests.support.fake_openai import FakeOpenAI, Reply


class LimitedProvider(FakeOpenAI):
    """The fake provider, with a sliding-window limit on calls; over it, 429 and Retry-After."""

    def __init__(self, limit: int, window: float) -> None:
        super().__init__()
        self.limit, self.window = limit, window
        self.accepted: deque[float] = deque()
        self.refused = 0

    async def _chat_completions(self, request: Request) -> Response:
        now = time.monotonic()
        while self.accepted and now - self.accepted[0] >= self.window:
            self.accepted.popleft()
        if len(self.accepted) >= self.limit:
            self.refused += 1
            wait = self.window - (now - self.accepted[0])
            return JSONResponse({"error": {"message": "rate limited"}}, 429, {"Retry-After": f"{wait:.2f}"})
        self.accepted.append(now)
        return await super()._chat_completions(request)


async def limited_round(calls: int, limit: int, window: float, with_limiter: bool) -> dict[str, float]:
    provider = LimitedProvider(limit, window)
    provider.always(Reply(delay=0.05))
    provider.start()
    try:
        async with Stack.open() as stack:
            env = {
                "STORYFLOW_LLM_PROVIDER": "openai", "STORYFLOW_LLM_BASE_URL": provider.base_url,
                "STORYFLOW_LLM_MODEL": "bench", "STORYFLOW_LLM_RETRIES": "20", "STORYFLOW_LLM_RATE_WINDOW": str(window),
                "STORYFLOW_LLM_RPM": str(limit if with_limiter else 0),
            }  # fmt: skip
            async with stack.api() as port, stack.workers(2, **env):
                bodies = [{"story_id": f"s{i}", "input": f"run {i}"} for i in range(calls // 2)]
                started = time.monotonic()
                (await run_load(port, post_runs(bodies), concurrency=32)).expect(202, "submitting")

                async def done() -> bool:
                    return not await stack.probe.redis.scard(keys.active_runs(TENANT))  # type: ignore[misc]

                await wait_until(done, timeout=600, interval=0.2, what="every run to finish")
                elapsed = time.monotonic() - started
    finally:
        provider.stop()
    answered = len(provider.requests)  # the 429s are answered before the fake records a request
    return {
        "share": (answered / elapsed) / (limit / window),
        "refused": provider.refused / max(1, answered + provider.refused),
        "elapsed": elapsed,
    }


async def follow(port: int, job_id: str, delays: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /run/{job_id}/events HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
    await writer.drain()
    while line := await reader.readline():
        if line.startswith(b"id: "):
            appended_ms = int(line[4:].split(b"-")[0])
            event = await reader.readline()
            if event.startswith(b"event: token"):
                delays.append(time.time() * 1000 - appended_ms)
            elif event.startswith(b"event: complete"):
                break
    writer.close()


async def streaming_round(runs: int, echo_delay: str) -> dict[str, float]:
    async with Stack.open() as stack:
        words = " ".join(f"w{i}" for i in range(200))
        async with stack.api() as port, stack.workers(1, STORYFLOW_ECHO_DELAY=echo_delay):
            load = await run_load(port, post_runs([{"story_id": f"t{i}", "input": words} for i in range(runs)]), 16)
            job_ids = [orjson.loads(body)["job_id"] for body in load.bodies]
            delays: list[float] = []
            await asyncio.gather(*(follow(port, job_id, delays) for job_id in job_ids))
            tokens = events = 0
            for job_id in job_ids:
                record: Any = await stack.probe.redis.hget(keys.run(TENANT, job_id), "usage")  # type: ignore[misc]
                tokens += orjson.loads(record)["completion_tokens"]
                entries = await stack.probe.redis.xrange(keys.run_events(TENANT, job_id))
                events += sum(1 for _, fields in entries if fields[b"event"] == b"token")
    return {"per_1000": 1000 * events / tokens, "p50": percentile(delays, 50), "p99": percentile(delays, 99)}


async def main(calls: int, limit: int, window: float) -> None:
    without = await limited_round(calls, limit, window, with_limiter=False)
    with_limits = await limited_round(calls, limit, window, with_limiter=True)
    rounds = {seconds: await streaming_round(50, seconds) for seconds in ("1", "0.25")}
    print(f"| {calls} calls, provider limit {limit} per {window:g} s, 2 workers | without limiter | with limiter |")
    print("|---|---:|---:|")
    print(f"| calls/s as a share of the provider's limit | {without['share']:.1%} | {with_limits['share']:.1%} |")
    print(f"| 429s as a share of calls | {without['refused']:.1%} | {with_limits['refused']:.1%} |")
    print(f"| seconds for all calls | {without['elapsed']:.1f} | {with_limits['elapsed']:.1f} |")
    print()
    print("| streaming: 50 runs x 2 steps x 200 words, flush 50 ms | 200 tokens/s a step | 800 tokens/s a step |")
    print("|---|---:|---:|")
    slow, fast = rounds["1"], rounds["0.25"]
    print(f"| Redis commands per 1000 streamed tokens | {slow['per_1000']:.1f} | {fast['per_1000']:.1f} |")
    print(
        f"| token event append -> client, p50 / p99 ms | {slow['p50']:.1f} / {slow['p99']:.1f} "
        f"| {fast['p50']:.1f} / {fast['p99']:.1f} |"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.llm_limits", description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--limit", type=int, default=600)
    parser.add_argument("--window", type=float, default=10.0)
    args = parser.parse_args()
    asyncio.run(main(args.calls, args.limit, args.window))
