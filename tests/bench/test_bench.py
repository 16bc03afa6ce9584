"""`python -m bench --quick` runs to the end and prints its table. Nothing here looks at a timing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.report import TABLE_HEADER
from bench.scenarios import SCENARIOS

ROOT = Path(__file__).resolve().parents[2]

SCENARIO_NAMES = [
    "1. raw arq throughput",
    "2. end to end",
    "3. latency",
    "4. LLM-bound load",
    "5. API throughput",
    "6. Redis cost",
]


def test_the_scenario_names_are_the_ones_checked_below() -> None:
    assert [title for _, title, _ in SCENARIOS] == SCENARIO_NAMES


@pytest.mark.timeout(260)
def test_quick_benchmark_completes_and_prints_the_table() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick"], cwd=ROOT, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    assert TABLE_HEADER in done.stdout
    for name in SCENARIO_NAMES:
        assert name in done.stdout, name
    assert "Errors:" not in done.stdout


@pytest.mark.timeout(200)
def test_quick_fault_benchmark_loses_nothing() -> None:
    """The fault table's own verdict (exit 0: no run lost, no memory write duplicated), not its timings."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.faults", "--quick"], cwd=ROOT, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    for scenario in ("worker SIGKILL", "Redis kill -9", "Redis outage"):
        assert f"| {scenario} | 20 | 20 | 0 | 0 | 0 |" in done.stdout
