"""Batch submission from a JSON-lines file through the batch API, safe to interrupt at any point.

The file's run bodies go to `POST /batches` in chunks of at most 10000 lines, each with an
Idempotency-Key derived from the file's content and the chunk's place in it. A chunk's batch id (and
the job id of each of its lines) is written to the sidecar state file as soon as the server answers.
If the command is killed before that write (even while the request is in flight), running it again
sends the same chunk with the same key, and the server answers the batch it already has (finishing
whatever an interrupted first request did not submit): no run is submitted twice either way.

Then the batches are followed by their counts (`GET /batches/{id}`), and once nothing more moves, the
results are read from `GET /runs?batch_id=` and written one JSON line per input line.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, Field, ValidationError

from client._protocol import MAX_BATCHES_SIZE
from client.async_client import AsyncStoryflowClient
from client.errors import StoryflowError
from client.models import Batch, BatchCounts, BatchInvalid, BatchItem, BatchRejected, PendingDocs, RunRecord

T = TypeVar("T")
STATE_VERSION = 2
SUBMIT_ATTEMPTS = 5
MAX_RETRY_AFTER = 30.0
UNAVAILABLE = 503
# Rounds in a row of re-sending a batch whose rejected runs all stay rejected, before giving up on them.
MAX_REFUSED_ROUNDS = 30
UNSUCCESSFUL = frozenset({"failed", "cancelled", "invalid", "rejected"})


@dataclass(frozen=True)
class InputLine:
    number: int
    body: dict[str, Any] | None
    problem: str | None = None


class LineItem(BaseModel):
    """What the server answered for one line of a batch: a job id, or why it has none."""

    line: int
    job_id: str | None = None
    status: str = "queued"
    pending_docs: list[str] | None = None
    error: Any = None


class BatchEntry(BaseModel):
    """One chunk of the file, submitted as one batch."""

    index: int
    batch_id: str
    items: list[LineItem]

    @property
    def rejected(self) -> list[LineItem]:
        return [item for item in self.items if item.status == "rejected"]


class BatchState(BaseModel):
    version: int = STATE_VERSION
    digest: str = ""  # sha256 of the input file; another file (or an edited one) is refused
    salt: str = ""  # mixed into the Idempotency-Keys; `--restart` picks a new one
    batches: list[BatchEntry] = Field(default_factory=list)

    def entry(self, index: int) -> BatchEntry | None:
        return next((entry for entry in self.batches if entry.index == index), None)


@dataclass(frozen=True)
class Tally:
    """The whole file's counts: the batches' counts plus the lines that were not valid JSON."""

    total: int
    counts: BatchCounts

    @property
    def ended(self) -> int:
        c = self.counts
        return c.complete + c.failed + c.cancelled + c.pending_docs + c.invalid + c.rejected

    @property
    def settled(self) -> bool:
        """Nothing more happens without someone acting: every run ended or awaits a person."""
        return self.counts.active == 0 and self.ended + self.counts.awaiting_input >= self.total


def state_path_for(input_path: Path) -> Path:
    return input_path.with_name(f"{input_path.name}.state.json")


def results_path_for(input_path: Path) -> Path:
    return input_path.with_name(f"{input_path.name}.results.jsonl")


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_input(path: Path) -> list[InputLine]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [_parse_line(number, text) for number, text in enumerate(lines, start=1) if text.strip()]


def chunks(lines: Sequence[InputLine], size: int = MAX_BATCHES_SIZE) -> list[list[InputLine]]:
    """The lines to submit (valid JSON objects), in batches of at most `size`."""
    valid = [line for line in lines if line.body is not None]
    return [valid[start : start + size] for start in range(0, len(valid), size)]


def idempotency_key(digest: str, index: int, salt: str = "") -> str:
    """The key of the file's `index`th batch: the same file (and salt) always gives the same keys."""
    return "sf-batch-" + hashlib.sha256(f"{digest}:{salt}:{index}".encode()).hexdigest()


def new_state(digest: str, *, restart: bool = False) -> BatchState:
    return BatchState(digest=digest, salt=secrets.token_hex(8) if restart else "")


def load_state(path: Path, digest: str) -> BatchState | None:
    """The state of an earlier invocation on this same file, or None if there is none."""
    if not path.exists():
        return None
    try:
        state = BatchState.model_validate_json(path.read_bytes())
    except (ValidationError, ValueError):
        raise StoryflowError(
            None, f"state file {path} is unreadable; delete it (or pass --restart) to start over"
        ) from None
    if state.version != STATE_VERSION:
        raise StoryflowError(None, f"state file {path} is from another storyflow version; pass --restart")
    if state.digest != digest:
        raise StoryflowError(
            None, f"the file changed since {path} was written; pass --restart to submit it as a new batch"
        )
    return state


def save_state(path: Path, state: BatchState) -> None:
    temporary = path.with_name(f"{path.name}.tmp")
    with temporary.open("w", encoding="utf-8") as out:
        out.write(state.model_dump_json())
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)


def tally(lines: Sequence[InputLine], batches: Iterable[Batch]) -> Tally:
    """The batches' counts summed, with the file's unparseable lines counted as invalid."""
    totals = BatchCounts()
    for batch in batches:
        for name in BatchCounts.model_fields:
            setattr(totals, name, getattr(totals, name) + getattr(batch.counts, name))
    totals.invalid += sum(line.body is None for line in lines)
    return Tally(total=len(lines), counts=totals)


def line_items(chunk: Sequence[InputLine], items: Sequence[BatchItem]) -> list[LineItem]:
    if len(items) != len(chunk):
        raise StoryflowError(None, f"server answered {len(items)} items for a batch of {len(chunk)}")
    return [_line_item(line.number, item) for line, item in zip(chunk, items, strict=True)]


def outcomes(lines: Sequence[InputLine], state: BatchState, records: dict[str, RunRecord]) -> list[dict[str, Any]]:
    """One result per input line, in order: the run's record, or why the line has no run."""
    items = {item.line: item for entry in state.batches for item in entry.items}
    return [_outcome(line, items.get(line.number), records) for line in lines]


def write_results(path: Path, results: Iterable[dict[str, Any]]) -> None:
    temporary = path.with_name(f"{path.name}.tmp")
    with temporary.open("w", encoding="utf-8") as out:
        for result in results:
            out.write(json.dumps(result) + "\n")
    os.replace(temporary, path)


class BatchRunner:
    """Submits the file's batches (each recorded at once), follows their counts, gathers the records."""

    def __init__(
        self,
        client: AsyncStoryflowClient,
        lines: Sequence[InputLine],
        state: BatchState,
        state_path: Path,
        *,
        on_batch: Callable[[str], None] = lambda batch_id: None,
        on_change: Callable[[Tally], None] = lambda tally: None,
    ) -> None:
        self._client = client
        self._lines = lines
        self._state = state
        self._state_path = state_path
        self._on_batch = on_batch
        self._on_change = on_change
        self._refused_rounds: dict[int, int] = {}

    async def run(self) -> tuple[Tally, list[dict[str, Any]]]:
        save_state(self._state_path, self._state)
        for entry in self._state.batches:
            self._on_batch(entry.batch_id)
        for index, chunk in enumerate(chunks(self._lines)):
            if self._state.entry(index) is None:
                await self._submit(index, chunk)
        final = await self._follow()
        records = await self._records()
        return final, outcomes(self._lines, self._state, records)

    async def _submit(self, index: int, chunk: list[InputLine]) -> BatchEntry:
        created = await self._with_retries(
            lambda: self._client.create_batch(
                [line.body or {} for line in chunk],
                idempotency_key=idempotency_key(self._state.digest, index, self._state.salt),
            )
        )
        entry = BatchEntry(index=index, batch_id=created.batch_id, items=line_items(chunk, created.items))
        first_time = self._state.entry(index) is None
        self._state.batches = sorted(
            [*(e for e in self._state.batches if e.index != index), entry], key=lambda e: e.index
        )
        save_state(self._state_path, self._state)
        if first_time:
            self._on_batch(entry.batch_id)
        return entry

    async def _follow(self) -> Tally:
        schedule = self._client.poll_schedule
        delay = schedule.first_delay
        previous: Tally | None = None
        ended_at_resend = -1
        while True:
            batches = await self._batches()
            current = tally(self._lines, batches)
            self._on_change(current)
            resent = False
            # Rejected runs (a limit refused them) are sent again once some capacity may be back: when
            # runs ended since the last try, or when nothing runs at all.
            if current.counts.active == 0 or current.ended > ended_at_resend:
                resent = await self._resend_rejected(batches, stuck=current.counts.active == 0)
                ended_at_resend = current.ended if resent else ended_at_resend
            if current.settled and not resent:
                return current
            delay = schedule.first_delay if current != previous or resent else schedule.next_delay(delay)
            previous = current
            await asyncio.sleep(delay)

    async def _batches(self) -> list[Batch]:
        batches = []
        for entry in self._state.batches:
            batch_id = entry.batch_id
            batches.append(await self._with_retries(partial(self._client.get_batch, batch_id)))
        return batches

    async def _resend_rejected(self, batches: list[Batch], *, stuck: bool) -> bool:
        """Send again (same key, same body) each batch with rejected runs: the server submits those again
        and finds the others already there. False when there was none to try (or they kept being
        refused while nothing else ran)."""
        chunked = chunks(self._lines)
        resent = False
        for entry, batch in zip(list(self._state.batches), batches, strict=True):
            rejected = len(entry.rejected)
            if not rejected or batch.counts.rejected == 0:
                continue
            refused = self._refused_rounds.get(entry.index, 0)
            if refused >= MAX_REFUSED_ROUNDS:
                continue
            again = await self._submit(entry.index, chunked[entry.index])
            self._refused_rounds[entry.index] = refused + 1 if stuck and len(again.rejected) >= rejected else 0
            resent = True
        return resent

    async def _records(self) -> dict[str, RunRecord]:
        records: dict[str, RunRecord] = {}
        for entry in self._state.batches:
            batch_id = entry.batch_id
            runs = await self._with_retries(partial(self._client.runs, batch_id=batch_id))
            records.update((record.job_id, record) for record in runs)
        return records

    @staticmethod
    async def _with_retries(call: Callable[[], Awaitable[T]]) -> T:
        for attempt in range(1, SUBMIT_ATTEMPTS + 1):
            try:
                return await call()
            except StoryflowError as exc:
                # A 503 (Redis away) or no answer at all: the same request again is safe (the batch's
                # Idempotency-Key makes a second POST answer the first's batch).
                if exc.status_code not in (UNAVAILABLE, None) or attempt == SUBMIT_ATTEMPTS:
                    raise
                await asyncio.sleep(min(exc.retry_after or float(attempt), MAX_RETRY_AFTER))
        raise AssertionError("unreachable")


def _parse_line(number: int, text: str) -> InputLine:
    try:
        body = json.loads(text)
    except ValueError as exc:
        return InputLine(number, None, f"line {number} is not valid JSON: {exc}")
    if not isinstance(body, dict):
        return InputLine(number, None, f"line {number} is not a JSON object")
    return InputLine(number, body)


def _line_item(number: int, item: BatchItem) -> LineItem:
    if isinstance(item, PendingDocs):
        return LineItem(line=number, status="pending_docs", pending_docs=item.pending_docs)
    if isinstance(item, BatchInvalid | BatchRejected):
        return LineItem(line=number, status=item.status, error=item.message)
    return LineItem(line=number, job_id=item.job_id, status=item.status)


def _outcome(line: InputLine, item: LineItem | None, records: dict[str, RunRecord]) -> dict[str, Any]:
    base: dict[str, Any] = {"line": line.number, "job_id": None}
    if line.body is None or item is None:
        error = {"type": "InvalidRun", "message": line.problem or "not submitted"}
        return base | {"status": "invalid", "error": error}
    if item.status == "pending_docs":
        return base | {"status": "pending_docs", "pending_docs": item.pending_docs}
    if item.status == "invalid":
        return base | {"status": "invalid", "error": {"type": "InvalidRun", "message": item.error}}
    if item.status == "rejected":
        return base | {"status": "rejected", "error": {"type": "Rejected", "message": item.error}}
    record = records.get(item.job_id or "")
    if record is None:
        error = {"type": "NotFound", "message": "the server no longer knows this run (expired?)"}
        return base | {"job_id": item.job_id, "status": "failed", "error": error}
    return {"line": line.number, **record.model_dump(mode="json")}
