"""Where a run stands between steps, kept in its record so that any attempt can go on from there.

After each finished step the worker writes (in the same fenced script that reports the step):
- `checkpoint`: the next node, its input, the run's pending memory writes, the visits so far and
  the digests of the documents the run started with;
- `steps`: every visit so far, as GET /run shows them;
- `trail` (hidden): the checkpoint as it was before each step, so a retry can go back to any step.

A new attempt starts from `checkpoint`; a retry or a person's answer computes a new one here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from typing import Any

PREVIEW_CHARS = 200


@dataclass
class Checkpoint:
    next: str | None  # the node to run next; None: the flow has ended, only the commit is left
    current: str  # the next step's input: the previous step's output, or the run's input
    memory: dict[str, Any] = field(default_factory=lambda: {"story": {}, "agents": {}})  # pending writes
    visits: dict[str, int] = field(default_factory=dict)
    docs: dict[str, str] = field(default_factory=dict)  # doc_id -> digest of the content at the run's start

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Checkpoint:
        return cls(**raw)


def digest(content: str) -> str:
    return hashlib.sha256(content.encode()).hexdigest()[:32]


class RewindError(ValueError):
    """A retry asked to go back to a node the run cannot restart from."""


@dataclass
class Rewound:
    checkpoint: Checkpoint | None
    steps: list[dict[str, Any]]
    trail: list[dict[str, Any]]


def rewind(
    nodes: Collection[str], steps: list[dict[str, Any]], trail: list[dict[str, Any]], checkpoint: dict[str, Any] | None,
    from_node: str | None,
) -> Rewound:  # fmt: skip
    """The state a retry resumes from: before `from_node`'s latest visit, or before the step that failed.

    The documents are read afresh by the retried run: a retry is how a person says "go on with what is
    there now".
    """
    if from_node is not None:
        if from_node not in nodes:
            raise RewindError(f"unknown node {from_node!r}; the flow's nodes: {sorted(nodes)}")
        visits = [i for i, step in enumerate(steps) if step["node"] == from_node]
        if not visits:
            raise RewindError(f"the run never reached node {from_node!r}")
        back_to: int | None = visits[-1]
    else:
        back_to = next((i for i, step in enumerate(steps) if step["status"] != "complete"), None)
    if back_to is None or back_to >= len(trail):
        state = Checkpoint.from_json(checkpoint) if checkpoint else None
        if state is not None:
            state.docs = {}
        return Rewound(state, steps, trail)
    state = Checkpoint.from_json(trail[back_to])
    state.docs = {}
    return Rewound(state, steps[:back_to], trail[:back_to])


def progress_of(steps: list[dict[str, Any]], total: int, current: str | None = None) -> dict[str, Any]:
    return {"done": [s["node"] for s in steps if s["status"] == "complete"], "current": current, "total": total}


def outputs_of(steps: list[dict[str, Any]]) -> dict[str, str]:
    return {s["node"]: s["output"] for s in steps if s["status"] == "complete" and s["output"] is not None}


def retry_update(
    state: dict[str, Any], nodes: Collection[str], start: str, from_node: str | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The record fields that queue a failed or cancelled run again, and its `retried` event's data.

    `state` is the record with its hidden fields (RunStore.get_state); RewindError for a bad `from_node`.
    """
    back = rewind(nodes, state["steps"] or [], state["trail"] or [], state["checkpoint"], from_node)
    fields = {
        "status": "queued", "error": None, "finished_at": None, "result": None, "awaiting": None,
        "steps": back.steps, "trail": back.trail, "checkpoint": back.checkpoint.to_json() if back.checkpoint else None,
        "progress": progress_of(back.steps, state["progress"]["total"]), "outputs": outputs_of(back.steps),
        "retry_base": state["attempts"],
    }  # fmt: skip
    retried = {"from": back.checkpoint.next if back.checkpoint else start, "after_attempt": state["attempts"]}
    return fields, retried
