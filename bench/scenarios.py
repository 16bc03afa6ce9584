"""The six scenarios. Each one measures storyflow and its baseline on the same Redis and stores figures
in `Results.metrics` under `s<N>.…` keys; bench.report turns them into the table."""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from bench import arq_baseline
from bench.harness import (
    BenchError,
    CpuMeter,
    HttpConnection,
    LoadResult,
    Stack,
    commandstats_delta,
    cpu_seconds,
    job_ids,
    percentile,
    post_runs,
    rate,
    run_body,
    run_load,
)


@dataclass(frozen=True)
class Sizes:
    arq_jobs: int  # 1, 6: no-op arq jobs
    e2e_runs: int  # 2: runs per submission mode
    http_concurrency: int  # 2, 5: concurrent HTTP connections
    batch_size: int  # 2, 4: runs per POST /runs/batch
    latency_runs: int  # 3: sequential round trips
    llm_delay_s: float  # 4: STORYFLOW_ECHO_DELAY
    llm_concurrency: int  # 4: STORYFLOW_WORKER_CONCURRENCY (and arq max_jobs of the baseline)
    llm_runs_per_worker: int  # 4
    api_requests: int  # 5: requests per route
    redis_runs: int  # 6
    timeout_s: float  # per scenario


FULL = Sizes(
    arq_jobs=2000, e2e_runs=2000, http_concurrency=64, batch_size=250, latency_runs=200, llm_delay_s=1.0,
    llm_concurrency=200, llm_runs_per_worker=1000, api_requests=10000, redis_runs=500, timeout_s=300,
)  # fmt: skip
QUICK = Sizes(
    arq_jobs=200, e2e_runs=200, http_concurrency=32, batch_size=100, latency_runs=20, llm_delay_s=0.2,
    llm_concurrency=50, llm_runs_per_worker=100, api_requests=500, redis_runs=50, timeout_s=60,
)  # fmt: skip
ENQUEUE_CONCURRENCY = 64
COST_CONCURRENCY = 16  # scenario 6 submits with fewer clients: a steadier, typical load
WARMUP = 10
LLM_STEPS = 2  # the `default` flow calls the LLM twice
RESULT_POLL_S = 0.01  # how often the baseline client polls arq for a job's result
SAMPLE_S = 0.25  # how often scenario 4 reads the workers' heartbeats


@dataclass
class Results:
    metrics: dict[str, float] = field(default_factory=dict)
    # scenario 6: command -> calls per run, for storyflow's `default` flow and for one arq job
    breakdown: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)


Scenario = Callable[[Stack, Sizes, Results], Awaitable[None]]


def combine(rounds: list[Results]) -> Results:
    """Several rounds in one: each figure's median; the last breakdown; every note and error, by round."""
    if len(rounds) == 1:
        return rounds[0]
    combined = Results(breakdown=rounds[-1].breakdown)
    for key in dict.fromkeys(key for results in rounds for key in results.metrics):
        values = [results.metrics[key] for results in rounds if key in results.metrics]
        combined.metrics[key] = statistics.median(values)
    for number, results in enumerate(rounds, 1):
        combined.notes += [f"[round {number}] {note}" for note in results.notes]
        combined.errors.update({f"[round {number}] {title}": error for title, error in results.errors.items()})
    return combined


# --- 1. raw arq throughput -------------------------------------------------------------------------


async def arq_throughput(stack: Stack, sizes: Sizes, results: Results) -> None:
    """N no-op jobs enqueued by 64 concurrent clients while one arq worker process runs them."""
    m, n = results.metrics, sizes.arq_jobs
    await stack.flush()
    async with stack.arq_workers(1):
        meter = CpuMeter(stack)
        before = await cost_snapshot(stack)
        meter.start()
        started = time.perf_counter()
        await stack.enqueue(arq_baseline.NOOP, n, concurrency=ENQUEUE_CONCURRENCY)
        enqueued = time.perf_counter()
        done = await stack.probe.wait_drained(sizes.timeout_s)
        results.notes.append(f"1: {meter.stop()}")
        cost = cost_between(before, await cost_snapshot(stack))
    m["s1.enqueue_per_s"] = rate(n, enqueued - started)
    m["s1.jobs_per_s"] = rate(n, done - started)
    m["s1.commands_per_job"] = total_calls(cost) / n
    results.breakdown["arq job, full load (1)"] = per_item(cost, n)


# --- 2. storyflow end to end -------------------------------------------------------------------------


async def end_to_end(stack: Stack, sizes: Sizes, results: Results) -> None:
    """N `default` runs over HTTP to one API process, run by one worker process, until all are complete."""
    m, n = results.metrics, sizes.e2e_runs
    await stack.flush()
    async with stack.workers(1):
        meter = CpuMeter(stack)
        meter.start()
        submit_rate, runs_rate = await _e2e_single(stack, sizes, n)
        results.notes.append(f"2, POST /run: {meter.stop()}")
        m["s2.post_submit_per_s"], m["s2.post_runs_per_s"] = submit_rate, runs_rate
        await stack.flush()
        before = await cost_snapshot(stack)
        meter.start()
        submit_rate, runs_rate = await _e2e_batch(stack, sizes, n)
        results.notes.append(f"2, POST /runs/batch: {meter.stop()}")
        cost = cost_between(before, await cost_snapshot(stack))
        m["s2.commands_per_run"] = total_calls(cost) / n
        results.breakdown["storyflow run, full load (2, batch)"] = per_item(cost, n)
        m["s2.batch_submit_per_s"], m["s2.batch_runs_per_s"] = submit_rate, runs_rate
    await stack.flush()


async def _e2e_single(stack: Stack, sizes: Sizes, n: int) -> tuple[float, float]:
    requests = post_runs([run_body(i, tag="e2e") for i in range(n)])
    started = time.perf_counter()
    load = await run_load(stack.api_port, requests, sizes.http_concurrency)
    load.expect(202, "POST /run")
    done = await stack.probe.wait_drained(sizes.timeout_s)
    await stack.probe.expect_complete(job_ids(load))
    return load.per_second, rate(n, done - started)


async def _e2e_batch(stack: Stack, sizes: Sizes, n: int, tag: str = "e2e-batch") -> tuple[float, float]:
    started = time.perf_counter()
    ids = await submit_batches(stack, [run_body(i, tag=tag) for i in range(n)], sizes.batch_size)
    submitted = time.perf_counter()
    done = await stack.probe.wait_drained(sizes.timeout_s)
    await stack.probe.expect_complete(ids)
    return rate(n, submitted - started), rate(n, done - started)


async def submit_batches(stack: Stack, bodies: Sequence[dict[str, Any]], batch_size: int) -> list[str]:
    """POST /runs/batch in chunks over 4 connections; returns the job ids in order."""
    chunks = [bodies[i : i + batch_size] for i in range(0, len(bodies), batch_size)]
    requests = [("POST", "/runs/batch", orjson.dumps({"runs": chunk})) for chunk in chunks]
    load = await run_load(stack.api_port, requests, concurrency=4)
    load.expect(200, "POST /runs/batch")
    answers = [answer for body in load.bodies for answer in orjson.loads(body)]
    if any(answer["status"] != "queued" for answer in answers):
        raise BenchError(f"batch answers not all queued: {Counter(a['status'] for a in answers)}")
    return [answer["job_id"] for answer in answers]


# --- 3. latency -----------------------------------------------------------------------------------------


async def latency(stack: Stack, sizes: Sizes, results: Results) -> None:
    """Sequential submit -> complete round trips: storyflow `POST /run?wait=10`, arq enqueue + result poll."""
    m = results.metrics
    await stack.flush()
    meter = CpuMeter(stack)
    async with stack.workers(1):
        meter.start()
        storyflow, split = await _storyflow_round_trips(stack, sizes.latency_runs)
        results.notes.append(f"3, storyflow: {split}; {meter.stop()}")
    await stack.flush()
    async with stack.arq_workers(1):
        meter.start()
        arq = await _arq_round_trips(stack, sizes.latency_runs)
        results.notes.append(f"3, arq: {meter.stop()}")
    await stack.flush()
    for name, values in (("sf", storyflow), ("arq", arq)):
        m[f"s3.{name}.p50_ms"], m[f"s3.{name}.p95_ms"] = percentile(values, 50), percentile(values, 95)


async def _storyflow_round_trips(stack: Stack, count: int) -> tuple[list[float], str]:
    """Latencies (ms) and where the median went, from the timestamps of the run records."""
    connection = HttpConnection(stack.api_port)
    latencies, queued, running, answering = [], [], [], []
    try:
        for index in range(-WARMUP, count):
            body = orjson.dumps(run_body(index, tag="latency"))
            started = time.perf_counter()
            status, reply = await connection.request("POST", "/run?wait=10", body)
            took = (time.perf_counter() - started) * 1000
            record = orjson.loads(reply)
            if status != 200 or record["status"] != "complete":
                raise BenchError(f"POST /run?wait=10 answered {status} {reply[:200]!r}")
            if index >= 0:
                latencies.append(took)
                enqueued, begun, finished = (_epoch_ms(record[f]) for f in ("enqueued_at", "started_at", "finished_at"))
                queued.append(begun - enqueued)
                running.append(finished - begun)
                answering.append(took - (finished - enqueued))
    finally:
        await connection.close()
    medians = [percentile(values, 50) for values in (queued, running, answering)]
    split = (
        "medians from the run records: enqueued -> started {:.1f} ms, started -> finished {:.1f} ms, "
        "rest (request in, finished -> answer out) {:.1f} ms".format(*medians)
    )
    return latencies, split


def _epoch_ms(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000


async def _arq_round_trips(stack: Stack, count: int) -> list[float]:
    latencies = []
    for index in range(-WARMUP, count):
        started = time.perf_counter()
        job = await stack.arq.enqueue_job(arq_baseline.NOOP)
        if job is None:
            raise BenchError("arq refused a job")
        await job.result(timeout=10, poll_delay=RESULT_POLL_S)
        if index >= 0:
            latencies.append((time.perf_counter() - started) * 1000)
    return latencies


# --- 4. LLM-bound load -----------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadShape:
    peak_per_process: float  # peak_total / processes
    peak_total: int  # most runs in flight at once, from their start and finish times
    steady_per_s: float  # completions per second between the 10th and the 90th percentile finish
    overall_per_s: float  # runs / (submit of the first -> last finished)
    commands_per_run: float
    heartbeat_peaks: list[int] = field(default_factory=list)  # storyflow: most `in_flight` each worker published
    cpu: str = ""
    breakdown: dict[str, float] = field(default_factory=dict)  # command -> calls per run


async def llm_bound(stack: Stack, sizes: Sizes, results: Results) -> None:
    """STORYFLOW_ECHO_DELAY and high concurrency, with 1 and 2 worker processes; arq sleep jobs as baseline."""
    m = results.metrics
    for processes in (1, 2):
        for name, measure in (("sf", _llm_storyflow), ("arq", _llm_arq)):
            await stack.flush()
            shape = await measure(stack, sizes, processes)
            prefix = f"s4.{name}.{processes}"
            m[f"{prefix}.peak_per_process"], m[f"{prefix}.peak_total"] = shape.peak_per_process, shape.peak_total
            m[f"{prefix}.runs_per_s"], m[f"{prefix}.overall_per_s"] = shape.steady_per_s, shape.overall_per_s
            m[f"{prefix}.commands_per_run"] = shape.commands_per_run
            if processes == 1:
                results.breakdown[f"{'storyflow run' if name == 'sf' else 'arq job'}, LLM-bound (4)"] = shape.breakdown
            heartbeat = f"peak `in_flight` of each heartbeat {shape.heartbeat_peaks}; " if name == "sf" else ""
            results.notes.append(
                f"4, {name}, {processes} process(es): {heartbeat}runs/s first submit -> last finish "
                f"{shape.overall_per_s:.0f}; {shape.cpu}"
            )
    await stack.flush()
    for name in ("sf", "arq"):
        m[f"s4.{name}.scaling"] = m[f"s4.{name}.2.runs_per_s"] / m[f"s4.{name}.1.runs_per_s"]


def _llm_timeout(sizes: Sizes, runs: int, processes: int) -> float:
    ideal = runs / (processes * sizes.llm_concurrency) * sizes.llm_delay_s * LLM_STEPS
    return 5 * ideal + sizes.timeout_s


async def _llm_storyflow(stack: Stack, sizes: Sizes, processes: int) -> LoadShape:
    runs = sizes.llm_runs_per_worker * processes
    env = {"STORYFLOW_ECHO_DELAY": str(sizes.llm_delay_s), "STORYFLOW_WORKER_CONCURRENCY": str(sizes.llm_concurrency)}
    async with stack.workers(processes, **env):
        before = await cost_snapshot(stack)
        sampler, meter = InFlightSampler(stack), CpuMeter(stack)
        sampling = asyncio.create_task(sampler.run())
        meter.start()
        try:
            started = time.perf_counter()
            ids = await submit_batches(stack, [run_body(i, tag="llm") for i in range(runs)], sizes.batch_size)
            done = await stack.probe.wait_drained(_llm_timeout(sizes, runs, processes), interval=0.05)
        finally:
            sampler.stop.set()
            await sampling
        cpu = meter.stop()
        cost = cost_between(before, await cost_snapshot(stack))
    await stack.probe.expect_complete(ids)
    times = await stack.probe.run_times(ids)
    peak = peak_overlap(times)
    return LoadShape(
        peak / processes,
        peak,
        steady_rate(times),
        rate(runs, done - started),
        total_calls(cost) / runs,
        heartbeat_peaks=sorted(sampler.peaks.values(), reverse=True),
        cpu=cpu,
        breakdown=per_item(cost, runs),
    )


async def _llm_arq(stack: Stack, sizes: Sizes, processes: int) -> LoadShape:
    jobs = sizes.llm_runs_per_worker * processes
    async with stack.arq_workers(processes, max_jobs=sizes.llm_concurrency):
        before = await cost_snapshot(stack)
        meter = CpuMeter(stack)
        meter.start()
        started = time.perf_counter()
        await stack.enqueue(arq_baseline.SLEEP, jobs, sizes.llm_delay_s, LLM_STEPS, concurrency=ENQUEUE_CONCURRENCY)
        done = await stack.probe.wait_drained(_llm_timeout(sizes, jobs, processes), interval=0.05)
        cpu = meter.stop()
        cost = cost_between(before, await cost_snapshot(stack))
    job_results = await stack.arq.all_job_results()
    if len(job_results) != jobs or not all(r.success for r in job_results):
        raise BenchError(f"expected {jobs} successful arq jobs, got {len(job_results)}")
    times = [(r.start_time.timestamp(), r.finish_time.timestamp()) for r in job_results]
    peak = peak_overlap(times)
    return LoadShape(
        peak / processes,
        peak,
        steady_rate(times),
        rate(jobs, done - started),
        total_calls(cost) / jobs,
        cpu=cpu,
        breakdown=per_item(cost, jobs),
    )


class InFlightSampler:
    """Reads `in_flight` from the workers' heartbeats (hash sf:workers:info) until told to stop."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.stop = asyncio.Event()
        self.peaks: dict[str, int] = {}

    async def run(self) -> None:
        while not self.stop.is_set():
            for worker, in_flight in (await self.stack.probe.worker_in_flight()).items():
                self.peaks[worker] = max(self.peaks.get(worker, 0), in_flight)
            await asyncio.sleep(SAMPLE_S)


def peak_overlap(times: Sequence[tuple[float, float]]) -> int:
    """Most intervals open at once (an end at the same instant as a start counts first)."""
    events = sorted([(start, 1) for start, _ in times] + [(end, -1) for _, end in times])
    peak = level = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak


def steady_rate(times: Sequence[tuple[float, float]]) -> float:
    """Finishes per second between the 10th and the 90th percentile finish: no ramp-up, no tail."""
    finishes = sorted(end for _, end in times)
    low, high = int(len(finishes) * 0.1), int(len(finishes) * 0.9) - 1
    if high <= low or finishes[high] <= finishes[low]:
        return rate(len(finishes), max(finishes, default=0) - min((s for s, _ in times), default=0))
    return (high - low) / (finishes[high] - finishes[low])


# --- 5. API ---------------------------------------------------------------------------------------------


async def api_throughput(stack: Stack, sizes: Sizes, results: Results) -> None:
    """POST /run and GET /run/{id} on one API process, no worker; GET /healthz (no Redis) as the baseline."""
    m, n, clients = results.metrics, sizes.api_requests, sizes.http_concurrency
    await stack.flush()
    port = stack.api_port
    warmup = post_runs([run_body(i, tag="warm") for i in range(200)])
    (await run_load(port, warmup, clients)).expect(202, "POST /run (warm-up)")
    meter = CpuMeter(stack)
    meter.start()
    healthz = await run_load(port, [("GET", "/healthz", None)] * n, clients)
    healthz.expect(200, "GET /healthz")
    results.notes.append(f"5, GET /healthz: {meter.stop()}")
    meter.start()
    posts = await run_load(port, post_runs([run_body(i, tag="api") for i in range(n)]), clients)
    posts.expect(202, "POST /run")
    results.notes.append(f"5, POST /run: {meter.stop()}")
    meter.start()
    gets = await run_load(port, [("GET", f"/run/{job_id}", None) for job_id in job_ids(posts)], clients)
    gets.expect(200, "GET /run/{id}")
    results.notes.append(f"5, GET /run/{{id}}: {meter.stop()}")
    await stack.flush()
    for name, load in (("healthz", healthz), ("post", posts), ("get", gets)):
        _store_load(m, f"s5.{name}", load)


def _store_load(m: dict[str, float], prefix: str, load: LoadResult) -> None:
    m[f"{prefix}.per_s"] = load.per_second
    m[f"{prefix}.p50_ms"] = percentile(load.latencies_ms, 50)
    m[f"{prefix}.p99_ms"] = percentile(load.latencies_ms, 99)


# --- 6. Redis cost ----------------------------------------------------------------------------------


IGNORED_COMMANDS = frozenset({"info", "flushall", "config|get", "config|set"})


@dataclass(frozen=True)
class Snapshot:
    commandstats: dict[str, Any]
    own: Counter[str]  # the benchmark's own commands so far
    redis_cpu_s: float


@dataclass(frozen=True)
class Cost:
    """What Redis did between two snapshots, less the benchmark's own probing."""

    calls: dict[str, int]  # command -> calls (commands run by Lua scripts included)
    redis_cpu_s: float  # CPU time of the redis-server process: commands, scripts, networking, AOF writes

    @property
    def total(self) -> int:
        return sum(self.calls.values())


async def cost_snapshot(stack: Stack) -> Snapshot:
    redis_pid = stack.redis_server.pid
    cpu = cpu_seconds(redis_pid) if redis_pid is not None else 0.0
    return Snapshot(await stack.probe.commandstats(), Counter(stack.probe.own), cpu)


def cost_between(before: Snapshot, after: Snapshot) -> Cost:
    delta = commandstats_delta(before.commandstats, after.commandstats)
    own = after.own - before.own
    calls = {}
    for command, (count, _) in delta.items():
        count -= own.get(command, 0)
        if count > 0 and command not in IGNORED_COMMANDS:
            calls[command] = count
    return Cost(calls, after.redis_cpu_s - before.redis_cpu_s)


def per_item(cost: Cost, count: int) -> dict[str, float]:
    return {command: calls / count for command, calls in cost.calls.items()}


def total_calls(cost: Cost) -> int:
    return cost.total


async def redis_cost(stack: Stack, sizes: Sizes, results: Results) -> None:
    """INFO commandstats around a batch: storyflow runs of 2 and 1 steps, and arq no-op jobs."""
    m, n = results.metrics, sizes.redis_runs
    await stack.flush()
    async with stack.arq_workers(1):
        before = await cost_snapshot(stack)
        await stack.enqueue(arq_baseline.NOOP, n, concurrency=COST_CONCURRENCY)
        await stack.probe.wait_drained(sizes.timeout_s)
        arq = cost_between(before, await cost_snapshot(stack))
    await stack.flush()
    async with stack.workers(1):
        two_steps = await _storyflow_cost(stack, sizes, "default")
        one_step = await _storyflow_cost(stack, sizes, "bench_one")
    await stack.flush()
    m["s6.sf.per_run"], m["s6.arq.per_job"] = total_calls(two_steps) / n, total_calls(arq) / n
    m["s6.sf.per_step"] = (total_calls(two_steps) - total_calls(one_step)) / n
    m["s6.sf.usec_per_run"], m["s6.arq.usec_per_job"] = two_steps.redis_cpu_s * 1e6 / n, arq.redis_cpu_s * 1e6 / n
    m["s6.sf.usec_per_step"] = (two_steps.redis_cpu_s - one_step.redis_cpu_s) * 1e6 / n
    results.breakdown["storyflow run (6)"] = per_item(two_steps, n)
    results.breakdown["storyflow step (6)"] = _step_breakdown(two_steps, one_step, n)
    results.breakdown["arq job (6)"] = per_item(arq, n)


async def _storyflow_cost(stack: Stack, sizes: Sizes, flow: str) -> Cost:
    n = sizes.redis_runs
    before = await cost_snapshot(stack)
    load = await run_load(
        stack.api_port, post_runs([run_body(i, tag=flow, flow=flow) for i in range(n)]), COST_CONCURRENCY
    )
    load.expect(202, f"POST /run ({flow})")
    await stack.probe.wait_drained(sizes.timeout_s)
    cost = cost_between(before, await cost_snapshot(stack))
    await stack.probe.expect_complete(job_ids(load))
    await stack.flush()
    return cost


def _step_breakdown(two: Cost, one: Cost, n: int) -> dict[str, float]:
    commands = set(two.calls) | set(one.calls)
    per_step = {c: (two.calls.get(c, 0) - one.calls.get(c, 0)) / n for c in commands}
    return {c: v for c, v in per_step.items() if not math.isclose(v, 0, abs_tol=0.005)}


# --- the list ------------------------------------------------------------------------------------------

SCENARIOS: list[tuple[str, str, Scenario]] = [
    ("1", "1. raw arq throughput", arq_throughput),
    ("2", "2. end to end", end_to_end),
    ("3", "3. latency", latency),
    ("4", "4. LLM-bound load", llm_bound),
    ("5", "5. API throughput", api_throughput),
    ("6", "6. Redis cost", redis_cost),
]
