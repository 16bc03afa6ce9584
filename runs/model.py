"""What a run is: its statuses, the fields of its record, and the ids that name it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

from infra.keys import JOB_ID_PATTERN

JOB_ID = re.compile(JOB_ID_PATTERN)


class RunStatus(StrEnum):
    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    AWAITING_INPUT = "awaiting_input"
    COMPLETE = "complete"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({RunStatus.COMPLETE, RunStatus.FAILED, RunStatus.CANCELLED})
# A client waiting for a run (`?wait`, the Python client) stops at these: the run needs nobody's
# action but a person's.
STOPPED = TERMINAL | {RunStatus.AWAITING_INPUT}

# The record as GET /run shows it, in this order.
RECORD_FIELDS = (
    "job_id", "status", "flow", "story_id", "attempts", "enqueued_at", "started_at", "finished_at",
    "progress", "result", "outputs", "error", "steps", "usage", "awaiting", "batch_id", "webhook",
)  # fmt: skip

Event = tuple[str, dict[str, Any]]  # (name, data) of a run event
# A run's event stream keeps about this many events (token events included), then drops the oldest.
EVENTS_MAXLEN = 5000


@dataclass(frozen=True)
class SubmitOutcome:
    status: Literal["queued", "existing", "mismatch", "full", "too_many_active", "rate_limited"]
    job_id: str | None
    retry_after_s: int | None = None


@dataclass(frozen=True)
class Attempt:
    """A run as a worker received it for one attempt."""

    tenant: str
    job_id: str
    token: str
    number: int
    flow: str
    story_id: str
    input: str


def initial_progress(total: int) -> dict[str, Any]:
    return {"done": [], "current": None, "total": total}


def empty_usage() -> dict[str, Any]:
    return {
        "prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0, "calls": 0, "cost_usd": None,
        "by_agent": {},
    }  # fmt: skip
