"""`python -m bench [--quick] [--only 2,3]`: run the scenarios, print a markdown table."""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import sys
import time
from pathlib import Path

import orjson

from bench.harness import Stack, cpu_model, usable_cpus
from bench.report import render
from bench.scenarios import FULL, QUICK, SCENARIOS, Results, Sizes, combine

SCENARIO_TIMEOUT_FACTOR = 3  # a scenario makes several waits, each bounded by Sizes.timeout_s


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes everywhere (CI): well under a minute")
    parser.add_argument("--only", default="", help="comma-separated scenario numbers to run, e.g. 2,3 (default: all)")
    parser.add_argument(
        "--appendfsync", choices=["always", "everysec", "no"], default=None,
        help="override the embedded Redis' appendfsync (storyflow up uses `always`)",
    )  # fmt: skip
    parser.add_argument(
        "--repeat", type=int, default=1, help="run everything this many times and report each figure's median"
    )
    parser.add_argument("--json", dest="json_path", default=None, help="also write the figures to this JSON file")
    parser.add_argument("--logs", type=Path, default=None, help="keep the processes' logs in this directory")
    parser.add_argument(
        "--profile", type=Path, default=None,
        help="attach `py-spy record` to every API and worker process; collapsed stacks go to this directory",
    )  # fmt: skip
    return parser.parse_args(argv)


async def machine_info(stack: Stack, mode: str) -> dict[str, str]:
    redis = await stack.redis_info()
    return {
        "machine": f"{usable_cpus()} CPUs ({cpu_model()}), {platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "redis": f"redis-server {redis['version']} (embedded, appendonly yes, appendfsync {redis['appendfsync']})",
        "mode": mode,
        "load average at start (1, 5, 15 min)": ", ".join(f"{v:.2f}" for v in os.getloadavg()),
    }


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def run_scenarios(stack: Stack, sizes: Sizes, selected: set[str], results: Results) -> None:
    for key, title, scenario in SCENARIOS:
        if selected and key not in selected:
            continue
        log(f"bench: {title} ...")
        stack.children.tag = f"s{key}"
        started = time.perf_counter()
        try:
            async with asyncio.timeout(sizes.timeout_s * SCENARIO_TIMEOUT_FACTOR), stack.api():
                await scenario(stack, sizes, results)
        except Exception as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise asyncio.CancelledError from exc  # redis-py may turn a cancellation into a connection error
            results.errors[title] = f"{type(exc).__name__}: {exc}"
            log(f"bench: {title} failed: {exc!r}")
            await stack.flush()
        log(f"bench: {title} took {time.perf_counter() - started:.1f} s")


async def run(args: argparse.Namespace) -> tuple[dict[str, str], Results]:
    sizes = QUICK if args.quick else FULL
    selected = {part.strip() for part in args.only.split(",") if part.strip()}
    rounds = [Results() for _ in range(max(1, args.repeat))]
    _cancel_on_signals()
    async with Stack.open(appendfsync=args.appendfsync, log_dir=args.logs, profile_dir=args.profile) as stack:
        mode = "quick (small N, figures are not meaningful)" if args.quick else "full"
        if len(rounds) > 1:
            mode += f"; every figure is the median of {len(rounds)} rounds"
        machine = await machine_info(stack, mode)
        for number, results in enumerate(rounds, 1):
            if len(rounds) > 1:
                log(f"bench: round {number} of {len(rounds)}")
            await run_scenarios(stack, sizes, selected, results)
    return machine, combine(rounds)


def _cancel_on_signals() -> None:
    """SIGINT or SIGTERM cancels the benchmark, so every `finally` runs and every child process is stopped."""
    task, loop = asyncio.current_task(), asyncio.get_running_loop()
    if task is None:
        return
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, task.cancel)


def write_json(path: str, machine: dict[str, str], results: Results) -> None:
    figures = {"machine": machine, "metrics": results.metrics, "breakdown": results.breakdown, "errors": results.errors}
    with open(path, "wb") as out:
        out.write(orjson.dumps(figures, option=orjson.OPT_INDENT_2))


def main(argv: list[str] | None = None) -> int:
    import uvloop

    args = parse_args(argv)
    try:
        machine, results = uvloop.run(run(args))
    except (asyncio.CancelledError, KeyboardInterrupt):
        log("bench: interrupted; every process it started is stopped")
        return 130
    print(render(machine, results), flush=True)
    if args.json_path:
        write_json(args.json_path, machine, results)
    return 1 if results.errors else 0


if __name__ == "__main__":
    sys.exit(main())
