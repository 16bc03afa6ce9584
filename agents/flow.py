"""Flow definitions and the flow factory."""

from __future__ import annotations

from itertools import pairwise

from pocketflow import AsyncFlow

from agents.base import Agent
from agents.llm import LLMClient

FLOWS: dict[str, tuple[str, ...]] = {
    "default": ("analyst", "summarizer"),
    "story": ("sm", "dev", "qa"),
}


def build_flow(agent_classes: list[type[Agent]], llm: LLMClient) -> AsyncFlow:
    """A fresh AsyncFlow chaining the agents in order; built per run, nodes hold no run state."""
    nodes = [cls(llm) for cls in agent_classes]
    for current, following in pairwise(nodes):
        current >> following
    return AsyncFlow(start=nodes[0])
