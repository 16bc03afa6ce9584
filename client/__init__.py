"""Typed clients for the storyflow HTTP API, and the CLI commands built on them."""

from client._protocol import DEFAULT_URL, MAX_BATCH_SIZE, MAX_BATCHES_SIZE, PollSchedule
from client.async_client import AsyncStoryflowClient
from client.errors import StoryflowError, WaitTimeout
from client.models import (
    Batch,
    BatchCounts,
    BatchCreated,
    BatchInvalid,
    BatchItem,
    BatchRejected,
    DocInfo,
    Document,
    DocWritten,
    FlowInfo,
    PendingDocs,
    Progress,
    RunAccepted,
    RunError,
    RunEvent,
    RunRecord,
    RunStatus,
    SubmitResult,
)
from client.sync_client import StoryflowClient

__all__ = [
    "DEFAULT_URL",
    "MAX_BATCHES_SIZE",
    "MAX_BATCH_SIZE",
    "AsyncStoryflowClient",
    "Batch",
    "BatchCounts",
    "BatchCreated",
    "BatchInvalid",
    "BatchItem",
    "BatchRejected",
    "DocInfo",
    "DocWritten",
    "Document",
    "FlowInfo",
    "PendingDocs",
    "PollSchedule",
    "Progress",
    "RunAccepted",
    "RunError",
    "RunEvent",
    "RunRecord",
    "RunStatus",
    "StoryflowClient",
    "StoryflowError",
    "SubmitResult",
    "WaitTimeout",
]
