"""Prometheus text for the whole fleet: counters from Redis, gauges read at scrape time."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from api.deps import OpsAccessDep, RedisDep
from api.errors import error_responses
from api.routes.workers import live_workers
from infra import keys
from infra.metrics import parse_field

router = APIRouter(tags=["operations"])
HELP = {
    "storyflow_runs_submitted_total": "Runs accepted into the queue, by flow.",
    "storyflow_runs_finished_total": "Runs that reached complete, failed or cancelled, by flow and status.",
    "storyflow_run_retries_total": "Attempts after the first (worker crash or lost lease), by flow.",
    "storyflow_llm_calls_total": "LLM calls, by provider.",
    "storyflow_llm_errors_total": "LLM calls that raised, by provider.",
    "storyflow_llm_tokens_total": "Tokens of LLM calls that returned, by provider, model, agent and kind.",
    "storyflow_llm_wait_seconds_total": "Time LLM calls waited for the fleet's rate limit, by model.",
    "storyflow_run_duration_seconds": "Wall time of one attempt of a run, by flow and outcome.",
    "storyflow_node_duration_seconds": "Wall time of one agent step, by flow and node.",
}


class Snapshot(Collector):
    def __init__(self, stored: dict[str, float], gauges: dict[str, float]) -> None:
        self.stored = stored
        self.gauges = gauges

    def collect(self) -> Any:
        yield from self._counters()
        yield from self._histograms()
        for name, value in self.gauges.items():
            yield GaugeMetricFamily(name, name.replace("_", " "), value=value)

    def _counters(self) -> list[Metric]:
        families: dict[str, CounterMetricFamily] = {}
        for raw, value in sorted(self.stored.items()):
            name, labels = parse_field(raw)
            if not name.endswith("_total"):
                continue
            family = families.get(name)
            if family is None:
                family = families[name] = CounterMetricFamily(name, HELP.get(name, name), labels=sorted(labels))
            family.add_metric([labels[key] for key in sorted(labels)], value)
        return list(families.values())

    def _histograms(self) -> list[Metric]:
        series: defaultdict[tuple[str, tuple[tuple[str, str], ...]], dict[str, Any]] = defaultdict(
            lambda: {"buckets": {}, "sum": 0.0}
        )
        for raw, value in self.stored.items():
            name, labels = parse_field(raw)
            if name.endswith("_bucket"):
                bound = labels.pop("le")
                series[(name.removesuffix("_bucket"), tuple(sorted(labels.items())))]["buckets"][bound] = value
            elif name.endswith("_sum"):
                series[(name.removesuffix("_sum"), tuple(sorted(labels.items())))]["sum"] = value
        families: dict[str, HistogramMetricFamily] = {}
        for (name, label_items), data in sorted(series.items()):
            label_names = [key for key, _ in label_items]
            family = families.get(name)
            if family is None:
                family = families[name] = HistogramMetricFamily(name, HELP.get(name, name), labels=label_names)
            buckets = sorted(data["buckets"].items(), key=lambda item: float(item[0]))
            family.add_metric([value for _, value in label_items], buckets, data["sum"])
        return list(families.values())


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}, **error_responses(401, 403, 503)},
)
async def metrics(redis: RedisDep, access: OpsAccessDep) -> Response:
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.METRICS)
        pipe.zcard(keys.ARQ_QUEUE)
        stored_raw, queue_depth = await pipe.execute()
    workers = await live_workers(redis)
    stored = {field.decode(): float(value) for field, value in stored_raw.items()}
    gauges = {
        "storyflow_queue_depth": float(queue_depth),
        "storyflow_runs_in_flight": float(sum(worker["in_flight"] for worker in workers)),
        "storyflow_workers_live": float(len(workers)),
    }
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Snapshot(stored, gauges))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
