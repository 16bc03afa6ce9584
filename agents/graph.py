"""A flow as a graph of nodes: its data model, the checks made at start-up, and its PocketFlow wiring.

A flow is declared either as a straight list of agents or as a graph:

    start: sm
    nodes:
      sm:  {next: po}
      po:  {human: "Approve the story draft?", on: {approve: dev, reject: ~}}
      dev: {next: qa}
      qa:  {on: {approve: ~, revise: dev}, max_visits: 3}

A node is named by its key and runs the agent `agent:` names (default: the key). `next: NODE` (or
`~`, the end) follows it unconditionally; `on: {action: NODE or ~}` lets the agent (or, with
`human:`, a person) choose the edge. A list `[a, b]` is the graph `a -> b -> end`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULT_MAX_VISITS = 5


class GraphError(ValueError):
    """A flow whose graph cannot run; the message names the flow and the node."""


@dataclass(frozen=True)
class NodeSpec:
    name: str
    agent: str | None  # None only for a human node
    next: str | None = None  # the node after this one when it has no `on`; None ends the flow
    on: Mapping[str, str | None] | None = None  # action -> node (None ends the flow)
    max_visits: int = DEFAULT_MAX_VISITS
    human: str | None = None  # the question asked of a person

    @property
    def actions(self) -> list[str]:
        return list(self.on or {})

    def targets(self) -> list[str]:
        found = list((self.on or {}).values()) if self.on is not None else [self.next]
        return [target for target in found if target is not None]

    def as_json(self) -> dict[str, Any]:
        shown: dict[str, Any] = {"agent": self.agent, "max_visits": self.max_visits}
        if self.on is not None:
            shown["on"] = dict(self.on)
        else:
            shown["next"] = self.next
        if self.human is not None:
            shown["human"] = self.human
        return shown


@dataclass(frozen=True)
class FlowGraph:
    name: str
    start: str
    nodes: Mapping[str, NodeSpec] = field(default_factory=dict)
    source: str = ""  # the file it was declared in, for error messages

    @property
    def agents(self) -> tuple[str, ...]:
        """The agents the flow runs, each once, in the order the graph declares them."""
        return tuple(dict.fromkeys(spec.agent for spec in self.nodes.values() if spec.agent is not None))

    def as_json(self) -> dict[str, Any]:
        return {"start": self.start, "nodes": {name: spec.as_json() for name, spec in self.nodes.items()}}

    def check(self, known_agents: Iterable[str]) -> None:
        """Unknown nodes or agents, unreachable nodes, malformed nodes: a GraphError naming the node."""
        prefix = f"{self.source}: " if self.source else ""
        known = set(known_agents)
        if self.start not in self.nodes:
            raise GraphError(f"{prefix}flow {self.name!r}: start {self.start!r} is not one of its nodes")
        for spec in self.nodes.values():
            here = f"{prefix}flow {self.name!r}, node {spec.name!r}"
            if spec.agent is not None and spec.agent not in known:
                raise GraphError(f"{here}: unknown agent {spec.agent!r} (known: {sorted(known)})")
            if spec.human is not None and not spec.on:
                raise GraphError(f"{here}: a human node needs `on:` with the actions a person may choose")
            for target in spec.targets():
                if target not in self.nodes:
                    raise GraphError(f"{here}: unknown node {target!r} (nodes: {sorted(self.nodes)})")
        unreachable = sorted(set(self.nodes) - self._reachable())
        if unreachable:
            raise GraphError(f"{prefix}flow {self.name!r}, node {unreachable[0]!r}: unreachable from {self.start!r}")

    def _reachable(self) -> set[str]:
        seen, todo = set(), [self.start]
        while todo:
            name = todo.pop()
            if name not in seen:
                seen.add(name)
                todo += self.nodes[name].targets()
        return seen


def straight_line(name: str, agents: Iterable[str]) -> FlowGraph:
    """The graph of a flow declared as a list: each agent a node, in order, then the end."""
    agent_names = list(agents)
    names: list[str] = []
    for i, agent in enumerate(agent_names):
        names.append(agent if agent not in names else f"{agent}_{agent_names[: i + 1].count(agent)}")
    if not names:
        raise GraphError(f"flow {name!r} has no agents")
    nodes = {
        node: NodeSpec(node, agent, next=names[i + 1] if i + 1 < len(names) else None)
        for i, (node, agent) in enumerate(zip(names, agent_names, strict=True))
    }
    return FlowGraph(name, names[0], nodes)
