"""A flow only the benchmark loads (STORYFLOW_AGENT_MODULES=bench.flows): `default` minus one step.

Comparing the Redis commands of `default` (analyst -> summarizer) with `bench_one` (analyst) gives the
cost of one agent step.
"""

from __future__ import annotations

FLOWS = {"bench_one": ("analyst",)}
