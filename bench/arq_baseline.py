"""The baseline worker: a plain arq Worker process with the arq settings storyflow uses.

Same JSON (orjson) job serializer as storyflow, uvloop, max_jobs 20 unless BENCH_ARQ_MAX_JOBS says
otherwise, poll_delay 0.01 s (arq's default is 0.5 s), results kept 600 s so clients can read them.
Everything else is arq's default. Run as `python -m bench.arq_baseline` with STORYFLOW_REDIS_URL set.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging.config
import os
from typing import Any

from arq.logs import default_log_config
from arq.worker import Worker, func

from infra.redis import create_redis, dumps_job, loads_job

POLL_DELAY_S = 0.01
DEFAULT_MAX_JOBS = 20
KEEP_RESULT_S = 600
READY_KEY_PREFIX = "bench:arq-ready:"
NOOP = "noop"
SLEEP = "sleep"


async def noop(ctx: dict[str, Any]) -> None:
    return None


async def sleep_steps(ctx: dict[str, Any], seconds: float, steps: int) -> None:
    """Stands in for an LLM-bound flow: `steps` sequential waits of `seconds`."""
    for _ in range(steps):
        await asyncio.sleep(seconds)


async def _announce_ready(ctx: dict[str, Any]) -> None:
    await ctx["redis"].set(f"{READY_KEY_PREFIX}{os.getpid()}", "1", ex=3600)


async def serve(url: str, max_jobs: int) -> None:
    worker = Worker(
        functions=[func(noop, name=NOOP), func(sleep_steps, name=SLEEP)],
        redis_pool=create_redis(url),
        max_jobs=max_jobs,
        poll_delay=POLL_DELAY_S,
        keep_result=KEEP_RESULT_S,
        job_serializer=dumps_job,
        job_deserializer=loads_job,
        on_startup=_announce_ready,
        handle_signals=True,
    )
    try:
        with contextlib.suppress(asyncio.CancelledError):
            await worker.async_run()
    finally:
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await worker.close()


def main() -> None:
    import uvloop

    # What the `arq` command does by default: arq's own INFO log lines, one per job start and end.
    logging.config.dictConfig(default_log_config(verbose=False))
    url = os.environ["STORYFLOW_REDIS_URL"]
    max_jobs = int(os.environ.get("BENCH_ARQ_MAX_JOBS", DEFAULT_MAX_JOBS))
    uvloop.run(serve(url, max_jobs))


if __name__ == "__main__":
    main()
