"""Faults under load, with real processes: how many runs survive, and how fast service comes back.

    .venv/bin/python -m bench.faults [--runs N] [--quick]

Scenarios (each on a fresh private Redis with an append-only file, one API, two workers):
- worker SIGKILL: N runs in flight, one worker is killed -9; a replacement starts at once.
- Redis kill -9: N runs in flight, redis-server is killed -9 and restarted 1 s later on its data.
- Redis outage: as above but Redis stays away 3 s; the API is probed every 0.1 s meanwhile.

Per scenario: runs submitted (each got a 202), complete, failed, lost (no terminal state within the
time limit), duplicated memory writes (stories whose analyst memory counts more than one commit;
each run has a story of its own), LLM calls repeated, and seconds from the fault until every run
was terminal.

The workers call a loopback OpenAI-compatible server (tests/support/fake_openai.py, 0.25 s a call,
two calls a run), which counts the calls: "repeated" is every call beyond two per complete run.
"without checkpoints" is what a new attempt starting from the first node would have repeated: the
steps of taken-over runs finished by an earlier attempt.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import orjson

from bench.harness import TENANT, BenchError, HttpConnection, Stack, job_ids, post_runs, run_body, run_load, wait_until
from infra import keys
from tests.support.fake_openai import FakeOpenAI, Reply

TERMINAL = ("complete", "failed", "cancelled")
FAKE = FakeOpenAI()
RECOVERY_LIMIT_S = 120.0
LLM_CALL_S = 0.25
WORKER_ENV: dict[str, str] = {}  # the fake provider's address, set in main()


@dataclass
class Outcome:
    scenario: str
    submitted: int
    complete: int
    failed: int
    lost: int
    duplicated: int
    recover_s: float
    repeated: int = 0
    without_checkpoints: int = 0
    note: str = ""


async def submit(stack: Stack, count: int, tag: str) -> tuple[list[str], list[str]]:
    bodies = [run_body(i, tag=tag) for i in range(count)]
    load = await run_load(stack.api_port, post_runs(bodies), concurrency=32)
    load.expect(202, f"submitting {tag}")
    return job_ids(load), [body["story_id"] for body in bodies]


async def settle(stack: Stack, ids: list[str], since: float) -> float:
    """Seconds from `since` until every run is terminal (or the limit, when some never are)."""

    async def all_terminal() -> bool:
        try:
            statuses = await stack.probe.statuses(ids)
        except (ConnectionError, OSError):
            return False
        return sum(statuses[status] for status in TERMINAL) == len(ids)

    try:
        await wait_until(all_terminal, timeout=RECOVERY_LIMIT_S, interval=0.1, what="every run to finish")
    except BenchError:  # the runs left over are reported as lost
        return RECOVERY_LIMIT_S
    return time.monotonic() - since


async def outcome(stack: Stack, name: str, ids: list[str], stories: list[str], recover_s: float) -> Outcome:
    statuses = await stack.probe.statuses(ids)
    async with stack.probe.redis.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hmget(keys.run(TENANT, job_id), ["attempts", "steps"])
        records = [(orjson.loads(a), orjson.loads(s)) for a, s in await pipe.execute()]
    earlier = sum(1 for attempts, steps in records for step in steps if step["attempt"] < attempts)
    async with stack.probe.redis.pipeline(transaction=False) as pipe:
        for story in stories:
            pipe.hget(keys.agent_memory(TENANT, story, "analyst"), "runs")
        commits = [orjson.loads(raw) if raw else 0 for raw in await pipe.execute()]
    terminal = sum(statuses[status] for status in TERMINAL)
    repeated = max(0, len(FAKE.requests) - 2 * statuses["complete"])
    return Outcome(
        name, len(ids), statuses["complete"], statuses["failed"], len(ids) - terminal,
        sum(1 for count in commits if count > 1), recover_s, repeated, earlier,
    )  # fmt: skip


async def worker_crash(stack: Stack, runs: int) -> Outcome:
    async with stack.api(), stack.workers(2, **WORKER_ENV) as workers:
        ids, stories = await submit(stack, runs, "crash")
        await asyncio.sleep(0.3)
        os.kill(workers[0].process.pid, signal.SIGKILL)
        fault = time.monotonic()
        async with stack.workers(1, **WORKER_ENV):
            recover = await settle(stack, ids, fault)
            result = await outcome(stack, "worker SIGKILL", ids, stories, recover)
    result.note = "lease 10 s (default): the killed worker's runs wait for it to run out"
    return result


async def redis_fault(stack: Stack, runs: int, away_s: float, name: str) -> Outcome:
    async with stack.api() as port, stack.workers(2, **WORKER_ENV):
        ids, stories = await submit(stack, runs, name.split()[1])
        await asyncio.sleep(0.3)
        stack.redis_server.kill()
        answers = await probe_api(port, away_s)
        stack.redis_server.start()
        back = time.monotonic()
        recover = await settle(stack, ids, back)
        result = await outcome(stack, name, ids, stories, recover + away_s)
    codes = ", ".join(f"{count}x {code}" for code, count in sorted(answers.items()))
    result.note = f"Redis away {away_s:.0f} s; POST /run meanwhile: {codes}"
    return result


async def probe_api(port: int, seconds: float) -> dict[int, int]:
    """POST /run every 0.1 s while Redis is away; what did the API answer?"""
    answers: dict[int, int] = {}
    connection = HttpConnection(port)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            status, _ = await connection.request("POST", "/run", orjson.dumps(run_body(0, tag="probe")))
            answers[status] = answers.get(status, 0) + 1
            await asyncio.sleep(0.1)
    finally:
        await connection.close()
    return answers


def table(outcomes: list[Outcome]) -> str:
    lines = [
        "| scenario | runs submitted (202) | complete | failed | lost | duplicated memory writes "
        "| LLM calls repeated | without checkpoints | seconds from fault to all finished | notes |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for o in outcomes:
        lines.append(
            f"| {o.scenario} | {o.submitted} | {o.complete} | {o.failed} | {o.lost} | {o.duplicated} "
            f"| {o.repeated} | {o.without_checkpoints} | {o.recover_s:.1f} | {o.note} |"
        )
    return "\n".join(lines)


async def main(runs: int) -> list[Outcome]:
    scenarios: list[Callable[[Stack], Awaitable[Outcome]]] = [
        lambda stack: worker_crash(stack, runs),
        lambda stack: redis_fault(stack, runs, 1.0, "Redis kill -9"),
        lambda stack: redis_fault(stack, runs, 3.0, "Redis outage"),
    ]
    FAKE.always(Reply(delay=LLM_CALL_S))
    FAKE.start()
    WORKER_ENV.update(
        STORYFLOW_LLM_PROVIDER="openai", STORYFLOW_LLM_BASE_URL=FAKE.base_url, STORYFLOW_LLM_MODEL="bench",
        STORYFLOW_LLM_TIMEOUT="30",
    )  # fmt: skip
    outcomes = []
    try:
        for scenario in scenarios:
            FAKE.requests.clear()
            async with Stack.open() as stack:
                outcomes.append(await scenario(stack))
    finally:
        FAKE.stop()
    return outcomes


def cli() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200, help="runs in flight when the fault hits")
    parser.add_argument("--quick", action="store_true", help="20 runs per scenario")
    args = parser.parse_args()
    outcomes = asyncio.run(main(20 if args.quick else args.runs))
    print(table(outcomes))
    if any(o.lost or o.duplicated for o in outcomes):
        raise SystemExit(1)


if __name__ == "__main__":
    cli()
