"""The overview's figures, from what the service already keeps in Redis: the queue, the live workers'
heartbeats, the tenant's active runs, and the per-minute counts the run scripts write when runs end."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from arq.connections import ArqRedis as Redis

from api.routes.workers import live_workers
from infra import keys
from infra.timeutil import now_ms

MINUTES = 60
KINDS = ("complete", "failed", "cancelled", "tokens")
CHART_HEIGHT = 60


@dataclass
class Series:
    """One figure per minute, oldest first, with the bar heights of its chart."""

    name: str
    values: list[int]
    total: int = 0
    bars: list[tuple[int, int, int]] = field(default_factory=list)  # (x, y, height) per minute

    def __post_init__(self) -> None:
        self.total = sum(self.values)
        top = max(self.values) or 1
        for minute, value in enumerate(self.values):
            height = round(CHART_HEIGHT * value / top)
            self.bars.append((minute * 5, CHART_HEIGHT - height, height))


@dataclass
class Overview:
    active_runs: int
    series: list[Series]
    queue_depth: int | None = None  # fleet figures: None for a tenant's key
    in_flight: int | None = None
    workers: list[dict[str, Any]] | None = None


async def per_minute(redis: Redis, tenant: str | None) -> list[Series]:
    """The last hour, minute by minute: one tenant's counts, or the whole fleet's (tenant None)."""
    current = now_ms() // 60_000
    minutes = range(current - MINUTES + 1, current + 1)
    async with redis.pipeline(transaction=False) as pipe:
        for minute in minutes:
            pipe.hgetall(keys.minute_stats(minute))
        rows: list[dict[bytes, bytes]] = await pipe.execute()
    values: dict[str, list[int]] = {kind: [] for kind in KINDS}
    for row in rows:
        sums = dict.fromkeys(KINDS, 0)
        for name, count in row.items():
            owner, _, kind = name.decode().rpartition("|")
            if kind in sums and (tenant is None or owner == tenant):
                sums[kind] += int(count)
        for kind in KINDS:
            values[kind].append(sums[kind])
    labels = {"complete": "runs complete", "failed": "runs failed", "cancelled": "runs cancelled", "tokens": "tokens"}
    return [Series(labels[kind], values[kind]) for kind in KINDS]


async def overview(redis: Redis, tenant: str, fleet: bool, is_ops: bool) -> Overview:
    active = 0 if is_ops else int(await redis.scard(keys.active_runs(tenant)))  # type: ignore[misc]
    figures = Overview(active, await per_minute(redis, None if is_ops else tenant))
    if fleet:
        figures.queue_depth = int(await redis.zcard(keys.ARQ_QUEUE))
        figures.workers = await live_workers(redis)
        figures.in_flight = sum(int(w.get("in_flight", 0)) for w in figures.workers)
    return figures
