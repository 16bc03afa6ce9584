"""Typed mirrors of the JSON bodies in the storyflow HTTP contract."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from client.detail import describe_detail

RunStatus = Literal["queued", "in_progress", "awaiting_input", "complete", "failed", "cancelled"]
# A wait ends when the run ends, or when it stops for a person's answer (POST /run/{id}/input).
FINISHED_STATUSES: frozenset[str] = frozenset({"complete", "failed", "cancelled", "awaiting_input"})
TERMINAL_EVENTS: frozenset[str] = frozenset({"complete", "failed", "cancelled", "awaiting_input"})


class _ServerModel(BaseModel):
    # Extra fields are kept so that printing a record never hides what a newer server sent.
    model_config = ConfigDict(extra="allow")


class RunError(_ServerModel):
    type: str = "Error"
    message: str = ""


class Progress(_ServerModel):
    done: list[str] = Field(default_factory=list)
    current: str | None = None
    total: int | None = None


class Awaiting(_ServerModel):
    node: str
    prompt: str = ""
    actions: list[str] = Field(default_factory=list)


class RunRecord(_ServerModel):
    job_id: str
    status: RunStatus
    flow: str = "default"
    story_id: str = ""
    attempts: int = 0
    enqueued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: Progress = Field(default_factory=Progress)
    result: str | None = None
    outputs: dict[str, Any] = Field(default_factory=dict)
    error: RunError | None = None
    steps: list[dict[str, Any]] = Field(default_factory=list)
    usage: dict[str, Any] | None = None
    awaiting: Awaiting | None = None

    @property
    def is_finished(self) -> bool:
        """Ended, or stopped for a person's answer: nothing more happens without someone acting."""
        return self.status in FINISHED_STATUSES


class RunAccepted(_ServerModel):
    """`202` answer of `POST /run`: the run is enqueued (or an idempotent replay of one)."""

    job_id: str
    status: RunStatus = "queued"
    pending_docs: None = None


class PendingDocs(_ServerModel):
    """`200` answer of `POST /run` when the flow's documents are missing; nothing was enqueued."""

    job_id: None = None
    status: Literal["pending_docs"] = "pending_docs"
    pending_docs: list[str]


class BatchInvalid(_ServerModel):
    """A `POST /runs/batch` item the server rejected, as `POST /run` would have with a 422."""

    job_id: None = None
    status: Literal["invalid"] = "invalid"
    error: Any = None

    @model_validator(mode="before")
    @classmethod
    def _accept_detail_as_error(cls, data: Any) -> Any:
        if isinstance(data, dict) and "error" not in data and "detail" in data:
            return {**data, "error": data["detail"]}
        return data

    @property
    def message(self) -> str:
        return describe_detail(self.error)


class BatchRejected(_ServerModel):
    """A `POST /runs/batch` item the server could not take now (its queue is full); submit it again later."""

    job_id: None = None
    status: Literal["rejected"] = "rejected"
    error: Any = None

    @property
    def message(self) -> str:
        return describe_detail(self.error)


SubmitResult = RunAccepted | PendingDocs | RunRecord
BatchItem = RunAccepted | PendingDocs | BatchInvalid | BatchRejected


class BatchCounts(_ServerModel):
    """How many of a batch's runs are in each status (`rejected`: refused by a limit, not queued)."""

    queued: int = 0
    in_progress: int = 0
    awaiting_input: int = 0
    complete: int = 0
    failed: int = 0
    cancelled: int = 0
    pending_docs: int = 0
    invalid: int = 0
    rejected: int = 0

    @property
    def active(self) -> int:
        """Runs that still move without anyone acting (queued or running)."""
        return self.queued + self.in_progress

    @property
    def unsuccessful(self) -> int:
        return self.failed + self.cancelled + self.invalid + self.rejected


class Batch(_ServerModel):
    """`GET /batches/{batch_id}`: a batch and the counts of its runs."""

    batch_id: str
    created_at: datetime | None = None
    total: int = 0
    counts: BatchCounts = Field(default_factory=BatchCounts)
    finished: bool = False
    webhook: dict[str, Any] | None = None


class BatchCreated(BaseModel):
    """`POST /batches`: the batch's id and one item per run, in order, as `POST /runs/batch` gives them."""

    batch_id: str
    items: list[BatchItem]
    created: bool = True  # False: the Idempotency-Key's batch already existed (a 200, not a 201)


class FlowInfo(_ServerModel):
    name: str
    agents: list[str] = Field(default_factory=list)
    requires_docs: list[str] = Field(default_factory=list)
    graph: dict[str, Any] | None = None


class Document(_ServerModel):
    doc_id: str
    content: str
    updated_at: datetime | None = None


class DocInfo(_ServerModel):
    doc_id: str
    updated_at: datetime | None = None
    bytes: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _accept_bare_id(cls, data: Any) -> Any:
        return {"doc_id": data} if isinstance(data, str) else data


class DocWritten(_ServerModel):
    doc_id: str
    created: bool
    updated_at: datetime | None = None


class RunEvent(BaseModel):
    """One Server-Sent Event of `GET /run/{job_id}/events`, its data decoded from JSON."""

    event: str
    id: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)

    @property
    def is_terminal(self) -> bool:
        return self.event in TERMINAL_EVENTS

    @property
    def node(self) -> str | None:
        for key in ("node", "agent", "name"):
            value = self.data.get(key)
            if isinstance(value, str):
                return value
        return None

    @classmethod
    def from_sse(cls, event: str, event_id: str, data: str) -> RunEvent:
        return cls(event=event, id=event_id or None, data=_decode_event_data(data))


def _decode_event_data(data: str) -> dict[str, Any]:
    try:
        decoded = json.loads(data)
    except ValueError:
        return {"text": data}
    return decoded if isinstance(decoded, dict) else {"value": decoded}
