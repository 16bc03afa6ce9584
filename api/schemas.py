"""Request and response bodies of the HTTP API (see CONTRACT.md)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
JOB_ID_PATTERN = r"^[0-9a-f]{32}$"


def _encodable(value: str) -> str:
    try:
        value.encode()
    except UnicodeEncodeError as exc:
        raise ValueError("must be valid Unicode (no lone surrogates)") from exc
    return value


Text = Annotated[str, AfterValidator(_encodable)]
StoryId = Annotated[str, Field(pattern=ID_PATTERN, examples=["story-1"])]
RunStatusName = Literal["queued", "in_progress", "complete", "failed", "cancelled"]


class RunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    flow: str = Field("default", max_length=128, examples=["default"])
    input: Text = Field(min_length=1, examples=["Users want to export their reports as PDF."])
    story_id: StoryId


class RunAccepted(BaseModel):
    job_id: str | None
    status: Literal["queued", "pending_docs"]
    pending_docs: list[str] | None


class Progress(BaseModel):
    done: list[str]
    current: str | None
    total: int


class RunError(BaseModel):
    type: str
    message: str


class RunRecord(BaseModel):
    job_id: str
    status: RunStatusName
    flow: str
    story_id: str
    attempts: int
    enqueued_at: str
    started_at: str | None
    finished_at: str | None
    progress: Progress
    result: str | None
    outputs: dict[str, str]
    error: RunError | None


class FlowInfo(BaseModel):
    name: str
    agents: list[str]
    requires_docs: list[str]


class DocumentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    content: Text


class DocumentOut(BaseModel):
    doc_id: str
    content: str
    updated_at: str


class DocumentSummary(BaseModel):
    doc_id: str
    updated_at: str
    bytes: int


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    runs: list[dict[str, Any]] = Field(max_length=1000, description="run bodies, as POST /run takes them")


class Memory(BaseModel):
    story: dict[str, Any]
    agents: dict[str, dict[str, Any]]


class ErrorBody(BaseModel):
    detail: Any = Field(description="a message, or a list of validation errors")


class Health(BaseModel):
    status: str
    reason: str | None = None
    workers: int | None = None
