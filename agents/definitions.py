"""Agents and flows declared as data: YAML files, so a prompt-only agent needs no Python.

An agent file holds one agent:

    name: critic
    prompt: You are a critic. Point out what is vague or missing.
    requires_docs: [prd]          # optional
    memory_key: critique          # optional: story-scope key its output is written to

A file named `flows.yaml` holds flows, each a list of agents or a graph (see agents/graph.py):

    flows:
      review: [analyst, critic]
      story:
        start: sm
        nodes:
          sm: {next: dev}
          dev: {next: qa}
          qa: {on: {approve: ~, revise: dev}, max_visits: 3}
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    ValidationError,
    model_validator,
)

from agents.base import Agent
from agents.graph import DEFAULT_MAX_VISITS, FlowGraph, NodeSpec, straight_line
from infra.keys import ID_PATTERN

Name = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
DocId = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
BUILTIN_DIR = Path(__file__).parent / "definitions"
FLOWS_FILE = "flows.yaml"


class DefinitionError(ValueError):
    pass


class AgentDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    prompt: Annotated[str, StringConstraints(min_length=1)]
    requires_docs: list[DocId] = Field(default_factory=list)
    memory_key: Name | None = None


class NodeDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agent: Name | None = None
    next: Name | None = None
    on: dict[Name, Name | None] | None = Field(None, min_length=1)
    max_visits: Annotated[int, Field(ge=1)] = DEFAULT_MAX_VISITS
    human: Annotated[str, StringConstraints(min_length=1)] | None = None

    def spec(self, key: str) -> NodeSpec:
        agent = None if self.human is not None else self.agent or key
        return NodeSpec(key, agent, next=self.next, on=self.on, max_visits=self.max_visits, human=self.human)

    @model_validator(mode="after")
    def _one_way_on(self) -> NodeDefinition:
        if "next" in self.model_fields_set and "on" in self.model_fields_set:
            raise ValueError("a node has either `next` or `on`, not both")
        if self.human is not None and self.agent is not None:
            raise ValueError("a human node runs no agent")
        return self


class GraphDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")

    start: Name
    nodes: Annotated[dict[Name, NodeDefinition], Field(min_length=1)]

    def graph(self, name: str) -> FlowGraph:
        return FlowGraph(name, self.start, {key: node.spec(key) for key, node in self.nodes.items()})


def _flow_shape(value: Any) -> str:
    return "list" if isinstance(value, list) else "graph"


# Told apart by shape, so an error speaks of the shape that was meant, not of both.
FlowDeclaration = Annotated[
    Annotated[Annotated[list[Name], Field(min_length=1)], Tag("list")] | Annotated[GraphDefinition, Tag("graph")],
    Discriminator(_flow_shape),
]


class FlowsDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")

    flows: dict[Name, FlowDeclaration]

    def graphs(self) -> dict[str, FlowGraph]:
        return {
            name: straight_line(name, flow) if isinstance(flow, list) else flow.graph(name)
            for name, flow in self.flows.items()
        }


class _Loader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false. YAML 1.1 would read the key `on:` (and yes/no/off) as a boolean."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _read(path: Path, model: type[BaseModel]) -> Any:
    try:
        raw = yaml.load(path.read_text(), Loader=_Loader)  # noqa: S506 (a SafeLoader)
        return model.model_validate(raw)
    except yaml.YAMLError as exc:
        raise DefinitionError(f"{path}: not valid YAML: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(file)'}: {e['msg']}" for e in exc.errors())
        raise DefinitionError(f"{path}: {problems}") from None


def agent_class(definition: AgentDefinition) -> type[Agent]:
    attributes = {
        "name": definition.name, "prompt": definition.prompt,
        "requires_docs": tuple(definition.requires_docs), "memory_key": definition.memory_key,
    }  # fmt: skip
    return type(f"DataAgent_{definition.name}", (Agent,), attributes)


def load_definitions(directories: list[Path]) -> tuple[dict[str, type[Agent]], dict[str, FlowGraph]]:
    agents: dict[str, type[Agent]] = {}
    flows: dict[str, FlowGraph] = {}
    for directory in directories:
        if not directory.is_dir():
            raise DefinitionError(f"{directory}: agent definitions directory does not exist")
        for path in sorted(directory.glob("*.y*ml")):
            if path.name == FLOWS_FILE:
                graphs = _read(path, FlowsDefinition).graphs()
                flows.update({name: replace(graph, source=str(path)) for name, graph in graphs.items()})
            else:
                definition = _read(path, AgentDefinition)
                agents[definition.name] = agent_class(definition)
    return agents, flows
