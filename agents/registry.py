"""The catalog of agents and flows, found once at start-up."""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from pocketflow import AsyncFlow

from agents import flow as shipped_flows
from agents import nodes as shipped_nodes
from agents.base import Agent
from agents.definitions import BUILTIN_DIR, load_definitions
from agents.graph import FlowGraph, GraphError, straight_line
from agents.llm import LLMClient

logger = logging.getLogger("storyflow.agents")


class CatalogError(ValueError):
    pass


# A flow as Python modules declare it (`FLOWS`): a sequence of agent names, or a graph.
FlowDeclaration = FlowGraph | tuple[str, ...] | list[str]


@dataclass(frozen=True)
class FlowSpec:
    name: str
    graph: FlowGraph
    requires_docs: tuple[str, ...]

    @property
    def agents(self) -> tuple[str, ...]:
        return self.graph.agents


class Catalog:
    def __init__(self, agents: dict[str, type[Agent]], flows: dict[str, FlowDeclaration]) -> None:
        self.agents = agents
        self.flows: dict[str, FlowSpec] = {}
        for name, declared in flows.items():
            graph = declared if isinstance(declared, FlowGraph) else straight_line(name, declared)
            try:
                graph.check(agents)
            except GraphError as exc:
                raise CatalogError(str(exc)) from None
            self.flows[name] = FlowSpec(name, graph, self._docs_of(graph.agents))

    def _docs_of(self, agent_names: tuple[str, ...]) -> tuple[str, ...]:
        docs: dict[str, None] = {}
        for agent in agent_names:
            docs.update(dict.fromkeys(self.agents[agent].requires_docs))
        return tuple(docs)

    def build(self, flow: str, llm: LLMClient, start: str | None = None) -> AsyncFlow:
        """The flow's graph as a PocketFlow AsyncFlow, from its start node or from `start` (a resumed run)."""
        from agents.flow import build_flow

        graph = self.flows[flow].graph
        return build_flow(graph, self.agents, llm, start or graph.start)


def _agents_in(module: ModuleType) -> dict[str, type[Agent]]:
    return {
        obj.name: obj
        for _, obj in inspect.getmembers(module, inspect.isclass)
        if issubclass(obj, Agent) and obj.__module__ == module.__name__ and hasattr(obj, "name")
    }


def load_catalog(extra_modules: list[str] | None = None, agent_dirs: list[Path] | None = None) -> Catalog:
    """Shipped agents and flows; those declared in YAML under agents/definitions/ and `agent_dirs`;
    and those of extra Python modules (each may define Agent subclasses and FLOWS)."""
    shipped_agents, shipped = _agents_in(shipped_nodes), dict(shipped_flows.FLOWS)
    agents = dict(shipped_agents)
    flows: dict[str, FlowDeclaration] = dict(shipped)
    data_agents, data_flows = load_definitions([BUILTIN_DIR, *(agent_dirs or [])])
    agents.update(data_agents)
    flows.update(data_flows)
    for module in [importlib.import_module(name) for name in extra_modules or []]:
        agents.update(_agents_in(module))
        flows.update(getattr(module, "FLOWS", {}))
    _log_replaced("agent", shipped_agents, agents)
    _log_replaced("flow", shipped, flows)
    return Catalog(agents, flows)


def _log_replaced(kind: str, shipped: Mapping[str, object], final: Mapping[str, object]) -> None:
    for name, original in shipped.items():
        if final[name] is not original:
            logger.warning("a declared %s replaces the shipped %s %r", kind, kind, name)
