"""Agents and flows declared as data: YAML files, so a prompt-only agent needs no Python.

An agent file holds one agent:

    name: critic
    prompt: You are a critic. Point out what is vague or missing.
    requires_docs: [prd]          # optional
    memory_key: critique          # optional: story-scope key its output is written to

A file named `flows.yaml` holds flows: `flows: {review: [analyst, critic]}`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from agents.base import Agent

Name = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
DocId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
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


class FlowsDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")

    flows: dict[Name, Annotated[list[Name], Field(min_length=1)]]


def _read(path: Path, model: type[BaseModel]) -> Any:
    try:
        raw = yaml.safe_load(path.read_text())
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


def load_definitions(directories: list[Path]) -> tuple[dict[str, type[Agent]], dict[str, tuple[str, ...]]]:
    agents: dict[str, type[Agent]] = {}
    flows: dict[str, tuple[str, ...]] = {}
    for directory in directories:
        if not directory.is_dir():
            raise DefinitionError(f"{directory}: agent definitions directory does not exist")
        for path in sorted(directory.glob("*.y*ml")):
            if path.name == FLOWS_FILE:
                flows.update({name: tuple(chain) for name, chain in _read(path, FlowsDefinition).flows.items()})
            else:
                definition = _read(path, AgentDefinition)
                agents[definition.name] = agent_class(definition)
    return agents, flows
