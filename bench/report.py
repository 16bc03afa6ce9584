"""Turns the scenarios' figures into the markdown the benchmark prints."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from bench.scenarios import SCENARIOS, Results

TABLE_HEADER = "| scenario | metric | storyflow | baseline | ratio | goal | met? |"
Unit = Literal["/s", "ms", "n", "x", "us"]
BREAKDOWN_ROWS = 16

# How each scenario's runs are set up; printed under the table.
SETUP_NOTES = [
    "Baseline worker: arq 0.28 `Worker`, the arq settings storyflow uses (orjson JSON serializer, uvloop, "
    "max_jobs 20), poll_delay 0.01 s, results kept 600 s, arq's INFO log lines on; arq's default otherwise.",
    "storyflow processes: `python -m infra.cli api|worker` as shipped (worker concurrency 20, "
    "STORYFLOW_POLL_INTERVAL 1 s: workers block on the wake list, log level INFO); a fresh API process per scenario.",
    "Every run has a story of its own (runs of one story execute one after the other by design).",
    "HTTP load: a minimal keep-alive HTTP/1.1 client (bench.harness.HttpConnection), N connections at once.",
    "1/2: enqueue (arq `enqueue_job`, 64 clients) or submit, while one worker process runs them; "
    "jobs/s = jobs / (first enqueue -> queue empty).",
    "3: one client, one at a time; arq = `enqueue_job` then `Job.result(poll_delay=0.01)`.",
    "4: the flow waits STORYFLOW_ECHO_DELAY per LLM call (2 calls); arq baseline: a job sleeping the same 2 x delay "
    "with max_jobs = the worker concurrency. runs/s counts finishes between the 10th and the 90th percentile. "
    "Peak in flight per process = most runs open at once (from their start and finish times) / processes.",
    "5: no worker runs; baseline = GET /healthz (no Redis) on the same process, same client.",
    "6: INFO commandstats before and after, less the benchmark's own polling; includes the workers' idle "
    "loops and heartbeats during the batch. A step = `default` (2 agents) minus `bench_one` (1 agent). "
    "CPU = the redis-server process' user + system time (/proc), AOF writes and fsync calls included.",
]


@dataclass(frozen=True)
class Goal:
    on: Literal["value", "ratio"]
    at_least: bool
    target: float

    def text(self, unit: Unit) -> str:
        sign = "≥" if self.at_least else "≤"
        if self.on == "ratio":
            return f"ratio {sign} {self.target:g}"
        return f"{sign} {format_value(self.target, unit)}"

    def met(self, value: float, ratio: float) -> bool | None:
        measured = ratio if self.on == "ratio" else value
        if math.isnan(measured):
            return None
        return measured >= self.target if self.at_least else measured <= self.target


@dataclass(frozen=True)
class Row:
    scenario: str
    metric: str
    storyflow: str | None  # metric key; None: the row is the baseline itself
    baseline: str
    unit: Unit
    goal: Goal | None = None


def _rows(titles: dict[str, str]) -> list[Row]:
    t1, t2, t3, t4, t5, t6 = (titles[key] for key in "123456")
    return [
        Row(t1, "no-op jobs/s, enqueue while 1 worker runs them", None, "s1.jobs_per_s", "/s"),
        Row(t1, "enqueue jobs/s (64 clients)", None, "s1.enqueue_per_s", "/s"),
        Row(t2, "runs/s, POST /run x64 connections (vs arq jobs/s)", "s2.post_runs_per_s", "s1.jobs_per_s", "/s",
            Goal("ratio", True, 0.5)),
        Row(t2, "runs/s, POST /runs/batch (vs arq jobs/s)", "s2.batch_runs_per_s", "s1.jobs_per_s", "/s",
            Goal("ratio", True, 0.5)),
        Row(t2, "submits/s, POST /run (vs arq enqueue/s)", "s2.post_submit_per_s", "s1.enqueue_per_s", "/s"),
        Row(t2, "submits/s, POST /runs/batch (vs arq enqueue/s)", "s2.batch_submit_per_s", "s1.enqueue_per_s", "/s"),
        Row(t2, "Redis commands per run, batch (vs per arq job in 1)", "s2.commands_per_run", "s1.commands_per_job",
            "n"),
        Row(t3, "submit -> complete p50 (POST /run?wait=10 vs arq)", "s3.sf.p50_ms", "s3.arq.p50_ms", "ms",
            Goal("value", False, 5)),
        Row(t3, "submit -> complete p95", "s3.sf.p95_ms", "s3.arq.p95_ms", "ms"),
        Row(t4, "peak in flight per process, 1 worker", "s4.sf.1.peak_per_process", "s4.arq.1.peak_per_process",
            "n", Goal("value", True, 100)),
        Row(t4, "peak in flight per process, 2 workers", "s4.sf.2.peak_per_process", "s4.arq.2.peak_per_process",
            "n", Goal("value", True, 100)),
        Row(t4, "runs/s, 1 worker process", "s4.sf.1.runs_per_s", "s4.arq.1.runs_per_s", "/s"),
        Row(t4, "runs/s, 2 worker processes", "s4.sf.2.runs_per_s", "s4.arq.2.runs_per_s", "/s"),
        Row(t4, "scaling: 2 processes / 1", "s4.sf.scaling", "s4.arq.scaling", "x", Goal("value", True, 1.8)),
        Row(t4, "Redis commands per run, 1 worker", "s4.sf.1.commands_per_run", "s4.arq.1.commands_per_run", "n"),
        Row(t5, "POST /run req/s (vs GET /healthz)", "s5.post.per_s", "s5.healthz.per_s", "/s",
            Goal("value", True, 1000)),
        Row(t5, "POST /run p50", "s5.post.p50_ms", "s5.healthz.p50_ms", "ms"),
        Row(t5, "POST /run p99", "s5.post.p99_ms", "s5.healthz.p99_ms", "ms"),
        Row(t5, "GET /run/{id} req/s (vs GET /healthz)", "s5.get.per_s", "s5.healthz.per_s", "/s"),
        Row(t5, "GET /run/{id} p50", "s5.get.p50_ms", "s5.healthz.p50_ms", "ms"),
        Row(t5, "GET /run/{id} p99", "s5.get.p99_ms", "s5.healthz.p99_ms", "ms"),
        Row(t6, "Redis commands per run, default flow (vs per arq job)", "s6.sf.per_run", "s6.arq.per_job", "n"),
        Row(t6, "Redis commands per agent step (vs per arq job)", "s6.sf.per_step", "s6.arq.per_job", "n"),
        Row(t6, "redis-server CPU per run (vs per arq job)", "s6.sf.usec_per_run", "s6.arq.usec_per_job", "us"),
        Row(t6, "redis-server CPU per agent step (vs per arq job)", "s6.sf.usec_per_step", "s6.arq.usec_per_job", "us"),
    ]  # fmt: skip


def format_value(value: float, unit: Unit) -> str:
    if math.isnan(value):
        return "—"
    if unit == "/s":
        return f"{value:,.0f}/s"
    if unit == "ms":
        return f"{value:.2f} ms"
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "us":
        return f"{value:,.0f} µs"
    return f"{value:,.1f}"


def _cells(row: Row, metrics: dict[str, float]) -> list[str]:
    baseline = metrics.get(row.baseline, math.nan)
    if row.storyflow is None:
        return [row.scenario, row.metric, "(baseline)", format_value(baseline, row.unit), "—", "—", "—"]
    value = metrics.get(row.storyflow, math.nan)
    ratio = value / baseline if baseline and not math.isnan(baseline) else math.nan
    goal, met = "—", "—"
    if row.goal is not None:
        goal = row.goal.text(row.unit)
        verdict = row.goal.met(value, ratio)
        met = "—" if verdict is None else ("yes" if verdict else "**no**")
    ratio_text = "—" if math.isnan(ratio) else f"{ratio:.2f}x"
    return [row.scenario, row.metric, format_value(value, row.unit), format_value(baseline, row.unit),
            ratio_text, goal, met]  # fmt: skip


def main_table(results: Results) -> list[str]:
    titles = {key: title for key, title, _ in SCENARIOS}
    lines = [TABLE_HEADER, "|---|---|---:|---:|---:|---|---|"]
    for row in _rows(titles):
        lines.append("| " + " | ".join(_cells(row, results.metrics)) + " |")
    return lines


def breakdown_table(results: Results) -> list[str]:
    if not results.breakdown:
        return []
    order = ["storyflow run (6)", "storyflow step (6)", "arq job (6)"]
    columns = sorted(results.breakdown, key=lambda c: (order.index(c) if c in order else len(order), c))
    first = results.breakdown[columns[0]]
    commands = sorted(set().union(*results.breakdown.values()), key=lambda c: (-first.get(c, 0), c))
    lines = [
        "Redis commands per run / step / job (INFO commandstats, commands inside Lua included; (N) = scenario; "
        "6 submits with 16 clients, 2 and 1 at full load):",
        "",
        "| command | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for command in commands[:BREAKDOWN_ROWS]:
        cells = [f"{results.breakdown[c][command]:.2f}" if command in results.breakdown[c] else "" for c in columns]
        lines.append(f"| {command} | " + " | ".join(cells) + " |")
    return lines


def render(machine: dict[str, str], results: Results) -> str:
    lines = ["# storyflow benchmark", ""]
    lines += [f"- {name}: {value}" for name, value in machine.items()]
    lines += ["", *main_table(results), ""]
    breakdown = breakdown_table(results)
    if breakdown:
        lines += [*breakdown, ""]
    lines += ["Setup:", *(f"- {note}" for note in [*SETUP_NOTES, *results.notes])]
    if results.errors:
        lines += ["", "Errors:", *(f"- {name}: {error}" for name, error in results.errors.items())]
    return "\n".join(lines) + "\n"
