"""Request and response bodies of the HTTP API (see CONTRACT.md)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from infra.keys import ID_PATTERN, JOB_ID_PATTERN

__all__ = ["ID_PATTERN", "JOB_ID_PATTERN"]  # the routes take them from here, with the models


def _encodable(value: str) -> str:
    try:
        value.encode()
    except UnicodeEncodeError as exc:
        raise ValueError("must be valid Unicode (no lone surrogates)") from exc
    return value


Text = Annotated[str, AfterValidator(_encodable)]
StoryId = Annotated[str, Field(pattern=ID_PATTERN, examples=["story-1"])]
RunStatusName = Literal["queued", "in_progress", "awaiting_input", "complete", "failed", "cancelled"]


class RunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    flow: str = Field("default", max_length=128, examples=["default"])
    input: Text = Field(min_length=1, examples=["Users want to export their reports as PDF."])
    story_id: StoryId
    webhook: str | None = Field(
        None, max_length=2048, description="an https URL that gets the run's events, signed (Standard Webhooks)"
    )


class RetryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_node: str | None = Field(None, alias="from", max_length=64, description="resume at this node's latest visit")


class InputRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: str = Field(max_length=64, examples=["approve"])
    text: Text | None = Field(None, description="the human step's output; by default, the previous step's")


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


class StepUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int


class Step(BaseModel):
    node: str
    agent: str | None = Field(description="the agent the node runs; null at a human step")
    visit: int = Field(description="1 for a node's first visit, 2 for its second (a loop), ...")
    attempt: int
    status: Literal["running", "complete", "failed"]
    action: str | None = Field(description="the action the agent (or the person) chose")
    output: str | None
    started_at: str
    finished_at: str | None
    usage: StepUsage | None


class AgentUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    calls: int


class RunUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    calls: int
    cost_usd: float | None = Field(description="set when STORYFLOW_LLM_PRICES has the model's prices")
    by_agent: dict[str, AgentUsage]


class Awaiting(BaseModel):
    node: str
    prompt: str
    actions: list[str]
    since: str


class WebhookState(BaseModel):
    url: str
    delivered: bool
    attempts: int
    last_status: int | None
    last_error: str | None = Field(None, description="why the last attempt got no answer")


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
    steps: list[Step] = Field(description="every node visit, in order (a node visited twice appears twice)")
    usage: RunUsage
    awaiting: Awaiting | None = Field(description="what a person is asked, while the run awaits input")
    batch_id: str | None
    webhook: WebhookState | None


class GraphNode(BaseModel):
    agent: str | None
    next: str | None = None
    on: dict[str, str | None] | None = None
    human: str | None = None
    max_visits: int


class Graph(BaseModel):
    start: str
    nodes: dict[str, GraphNode]


class FlowInfo(BaseModel):
    name: str
    agents: list[str]
    requires_docs: list[str]
    graph: Graph


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


class BatchesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    runs: list[dict[str, Any]] = Field(max_length=10000, description="run bodies, as POST /run takes them")
    webhook: str | None = Field(None, max_length=2048, description="gets one batch.finished event")


class BatchCounts(BaseModel):
    queued: int
    in_progress: int
    awaiting_input: int
    complete: int
    failed: int
    cancelled: int
    pending_docs: int
    invalid: int
    rejected: int = Field(description="refused by a limit (queue full, too many active, rate): not queued")


class Batch(BaseModel):
    batch_id: str
    created_at: str
    total: int
    counts: BatchCounts
    finished: bool = Field(description="every run of it has ended (complete, failed or cancelled)")
    webhook: WebhookState | None


class BatchCreated(BaseModel):
    batch_id: str
    items: list[dict[str, Any]]


class Memory(BaseModel):
    story: dict[str, Any]
    agents: dict[str, dict[str, Any]]


class ErrorBody(BaseModel):
    detail: Any = Field(description="a message, or a list of validation errors")


class Health(BaseModel):
    status: str
    reason: str | None = None
    workers: int | None = None
