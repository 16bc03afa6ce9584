"""Metrics shared by every process through one Redis hash, so the API's /metrics shows the whole fleet.

Fields are `name|label=value,...`. Exact counters (runs submitted, runs finished) are incremented
inside the Lua scripts that make those transitions; worker-local figures (durations, LLM calls)
are kept in process and flushed with the worker's heartbeat, so a run costs no extra round trip.
"""

from __future__ import annotations

import functools
from collections import defaultdict

from redis.asyncio.client import Pipeline

from infra import keys

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


def field(name: str, **labels: str) -> str:
    return name + "|" + ",".join(f"{key}={value}" for key, value in sorted(labels.items()))


def parse_field(raw: str) -> tuple[str, dict[str, str]]:
    name, _, label_text = raw.partition("|")
    labels = dict(pair.split("=", 1) for pair in label_text.split(",") if pair)
    return name, labels


@functools.cache
def _histogram_fields(name: str, labels: tuple[tuple[str, str], ...]) -> tuple[list[str], str, str]:
    """The field names of one histogram series, built once: (buckets incl. +Inf, sum, count)."""
    label_map = dict(labels)
    bounds = [str(bound) for bound in DURATION_BUCKETS] + ["+Inf"]
    buckets = [field(f"{name}_bucket", le=bound, **label_map) for bound in bounds]
    return buckets, field(f"{name}_sum", **label_map), field(f"{name}_count", **label_map)


class LocalMetrics:
    """Counters and histograms of one worker process, not yet flushed to Redis."""

    def __init__(self) -> None:
        self._pending: defaultdict[str, float] = defaultdict(float)

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        self._pending[field(name, **labels)] += amount

    def observe(self, name: str, seconds: float, **labels: str) -> None:
        buckets, total, count = _histogram_fields(name, tuple(sorted(labels.items())))
        for bound, bucket in zip(DURATION_BUCKETS, buckets, strict=False):
            if seconds <= bound:
                self._pending[bucket] += 1
        self._pending[buckets[-1]] += 1
        self._pending[total] += seconds
        self._pending[count] += 1

    def flush_into(self, pipe: Pipeline) -> dict[str, float]:
        """Queue the pending deltas on `pipe`; returns them so a failed flush can be restored."""
        drained, self._pending = dict(self._pending), defaultdict(float)
        for name, amount in drained.items():
            pipe.hincrbyfloat(keys.METRICS, name, amount)
        return drained

    def restore(self, drained: dict[str, float]) -> None:
        for name, amount in drained.items():
            self._pending[name] += amount
