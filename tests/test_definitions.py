"""Agents and flows declared in YAML: loaded at start-up, validated with messages naming file and field."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from redis.asyncio import Redis

from agents.definitions import DefinitionError
from agents.registry import CatalogError, load_catalog
from tests.conftest import ROOT, api_client, drain, make_settings

CRITIC = "name: critic\nprompt: You are a critic.\nrequires_docs: [prd]\nmemory_key: critique\n"
FLOWS = "flows:\n  review: [analyst, critic]\n"


def write(directory: Path, **files: str) -> Path:
    directory.mkdir(exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


def test_a_declared_agent_and_flow_join_the_catalog(tmp_path: Path) -> None:
    catalog = load_catalog(agent_dirs=[write(tmp_path / "defs", **{"critic.yaml": CRITIC, "flows.yaml": FLOWS})])
    assert catalog.flows["review"].agents == ("analyst", "critic")
    assert catalog.flows["review"].requires_docs == ("prd",)
    assert catalog.agents["critic"].prompt == "You are a critic."


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"critic.yaml": "name: critic\n"}, "critic.yaml: prompt: Field required"),
        ({"critic.yaml": "name: Critic!\nprompt: p\n"}, "critic.yaml: name: String should match"),
        ({"critic.yaml": CRITIC + "colour: red\n"}, "critic.yaml: colour: Extra inputs are not permitted"),
        ({"critic.yaml": "name: [unclosed\n"}, "critic.yaml: not valid YAML"),
        ({"flows.yaml": "flows:\n  review: []\n"}, "flows.yaml: flows.review.list: List should have at least 1"),
        (
            {"flows.yaml": "flows:\n  loop:\n    start: sm\n    nodes:\n      sm: {next: dev, on: {a: ~}}\n"},
            "flows.yaml: flows.loop.graph.nodes.sm: Value error, a node has either `next` or `on`, not both",
        ),
    ],
)
def test_invalid_definitions_name_the_file_and_field(tmp_path: Path, files: dict, expected: str) -> None:
    with pytest.raises(DefinitionError) as error:
        load_catalog(agent_dirs=[write(tmp_path / "defs", **files)])
    assert expected in str(error.value)


def test_a_flow_of_unknown_agents_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match=r"flows\.yaml: flow 'review', node 'critic': unknown agent 'critic'"):
        load_catalog(agent_dirs=[write(tmp_path / "defs", **{"flows.yaml": FLOWS})])


GRAPH = "flows:\n  g:\n    start: sm\n    nodes:\n"


@pytest.mark.parametrize(
    ("nodes", "expected"),
    [
        ("      sm: {next: nowhere}\n", "flow 'g', node 'sm': unknown node 'nowhere'"),
        ("      sm: {on: {approve: ~, revise: dve}}\n", "flow 'g', node 'sm': unknown node 'dve'"),
        ("      sm: {agent: ghost}\n", "flow 'g', node 'sm': unknown agent 'ghost'"),
        ("      sm: {next: ~}\n      dev: {next: sm}\n", "flow 'g', node 'dev': unreachable from 'sm'"),
        ('      sm: {human: "Approve?"}\n', "flow 'g', node 'sm': a human node needs `on:`"),
        ("      dev: {next: ~}\n", "flow 'g': start 'sm' is not one of its nodes"),
    ],
    ids=["next-unknown", "on-unknown", "agent-unknown", "unreachable", "human-without-on", "start-unknown"],
)
def test_a_graph_that_cannot_run_is_refused_naming_file_and_node(tmp_path: Path, nodes: str, expected: str) -> None:
    with pytest.raises(CatalogError) as error:
        load_catalog(agent_dirs=[write(tmp_path / "defs", **{"flows.yaml": GRAPH + nodes})])
    assert f"flows.yaml: {expected}" in str(error.value)


def test_a_graph_joins_the_catalog_with_its_agents_and_documents(tmp_path: Path) -> None:
    nodes = '      sm: {next: po}\n      po: {human: "Approve?", on: {approve: dev, reject: ~}}\n      dev: {next: ~}\n'
    catalog = load_catalog(agent_dirs=[write(tmp_path / "defs", **{"flows.yaml": GRAPH + nodes})])
    flow = catalog.flows["g"]
    assert flow.agents == ("sm", "dev") and flow.requires_docs == ("prd", "architecture")
    assert flow.graph.as_json()["nodes"]["po"] == {
        "agent": None, "on": {"approve": "dev", "reject": None}, "human": "Approve?", "max_visits": 5
    }  # fmt: skip


async def test_a_declared_flow_runs_and_writes_its_memory_key(redis_url: str, redis: Redis, tmp_path: Path) -> None:
    settings = make_settings(redis_url, agent_dirs=str(write(tmp_path / "defs", **{"critic.yaml": CRITIC,
                                                                                   "flows.yaml": FLOWS})))  # fmt: skip
    async for client in api_client(settings):
        run = {"flow": "review", "story_id": "s", "input": "idea"}
        assert (await client.post("/run", json=run)).json()["pending_docs"] == ["prd"]
        await client.put("/docs/prd", json={"content": "the prd"})
        job_id = (await client.post("/run", json=run)).json()["job_id"]
        await drain(settings)
        record = (await client.get(f"/run/{job_id}")).json()
        assert record["status"] == "complete" and record["result"] == "[critic] [analyst] idea"
        memory = (await client.get("/memory/s")).json()
        assert memory["story"]["critique"] == "[critic] [analyst] idea"


@pytest.mark.slow
def test_a_worker_with_a_bad_definition_stops_with_one_line(tmp_path: Path) -> None:
    defs = write(tmp_path / "defs", **{"critic.yaml": "name: critic\n"})
    env = {**os.environ, "STORYFLOW_REDIS_URL": "redis://127.0.0.1:1", "STORYFLOW_AGENT_DIRS": str(defs)}
    result = subprocess.run(
        [sys.executable, "-m", "infra.cli", "worker"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "critic.yaml: prompt: Field required" in result.stderr
