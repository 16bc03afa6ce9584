"""Flow definitions and the flow factory: a flow's graph wired as PocketFlow nodes and actions."""

from __future__ import annotations

from pocketflow import AsyncFlow, AsyncNode

from agents.base import Agent, End, HumanStep
from agents.graph import FlowGraph, NodeSpec
from agents.llm import LLMClient

FLOWS: dict[str, tuple[str, ...] | FlowGraph] = {
    "default": ("analyst", "summarizer"),
    "story": FlowGraph(
        "story",
        "sm",
        {
            "sm": NodeSpec("sm", "sm", next="dev"),
            "dev": NodeSpec("dev", "dev", next="qa"),
            "qa": NodeSpec("qa", "qa", on={"approve": None, "revise": "dev"}, max_visits=3),
        },
    ),
    "story_approval": FlowGraph(
        "story_approval",
        "sm",
        {
            "sm": NodeSpec("sm", "sm", next="po"),
            "po": NodeSpec("po", None, on={"approve": "dev", "reject": None}, human="Approve the story draft?"),
            "dev": NodeSpec("dev", "dev", next="qa"),
            "qa": NodeSpec("qa", "qa", on={"approve": None, "revise": "dev"}, max_visits=3),
        },
    ),
}


def build_flow(graph: FlowGraph, agents: dict[str, type[Agent]], llm: LLMClient, start: str) -> AsyncFlow:
    """A fresh AsyncFlow of the graph, starting at node `start`; built per attempt, nodes hold no run state."""
    nodes: dict[str, AsyncNode] = {
        name: HumanStep(spec) if spec.agent is None else agents[spec.agent](llm, spec)
        for name, spec in graph.nodes.items()
    }
    end = End()
    for name, spec in graph.nodes.items():
        if spec.on is not None:
            for action, target in spec.on.items():
                nodes[name] - action >> (nodes[target] if target is not None else end)
        elif spec.next is not None:
            nodes[name] >> nodes[spec.next]
    return AsyncFlow(start=nodes[start])
