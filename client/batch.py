"""Resumable batch submission: JSON-lines input, a sidecar state file, JSON-lines results.

The state file records every line's job id right after its chunk is accepted, so a second
invocation polls those runs instead of submitting them again. A crash between the server
accepting a chunk and the state being written can still submit that chunk twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from client._protocol import MAX_BATCH_SIZE
from client.async_client import AsyncStoryflowClient
from client.errors import StoryflowError
from client.models import BatchInvalid, BatchItem, BatchRejected, PendingDocs, RunAccepted, RunRecord

SUBMIT_ATTEMPTS = 5
MAX_RETRY_AFTER = 30.0
NOT_FOUND = 404
UNAVAILABLE = 503
MAX_REFUSED_ROUNDS = 30
PROGRESS_SAVE_INTERVAL = 2.0
FAILED_STATUSES = frozenset({"failed", "cancelled", "invalid"})


@dataclass(frozen=True)
class InputLine:
    number: int
    fingerprint: str
    body: dict[str, Any] | None
    problem: str | None = None


class LineState(BaseModel):
    fingerprint: str
    status: str
    job_id: str | None = None
    outcome: dict[str, Any] | None = None

    @property
    def is_final(self) -> bool:
        return self.outcome is not None


class BatchState(BaseModel):
    version: int = 1
    lines: dict[int, LineState] = Field(default_factory=dict)


@dataclass(frozen=True)
class BatchCounts:
    total: int
    complete: int
    failed: int
    pending_docs: int

    @property
    def finished(self) -> int:
        return self.complete + self.failed + self.pending_docs

    @property
    def unfinished(self) -> int:
        return self.total - self.finished


def state_path_for(input_path: Path) -> Path:
    return input_path.with_name(f"{input_path.name}.state.json")


def results_path_for(input_path: Path) -> Path:
    return input_path.with_name(f"{input_path.name}.results.jsonl")


def read_input(path: Path) -> list[InputLine]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [_parse_line(number, text) for number, text in enumerate(lines, start=1) if text.strip()]


def load_state(path: Path) -> BatchState:
    if not path.exists():
        return BatchState()
    try:
        return BatchState.model_validate_json(path.read_bytes())
    except (ValidationError, ValueError):
        raise StoryflowError(
            None, f"state file {path} is unreadable; delete it (or pass --restart) to start over"
        ) from None


def save_state(path: Path, state: BatchState) -> None:
    temporary = path.with_name(f"{path.name}.tmp")
    temporary.write_text(state.model_dump_json(), encoding="utf-8")
    os.replace(temporary, path)


def write_results(path: Path, lines: Sequence[InputLine], state: BatchState) -> None:
    with path.open("w", encoding="utf-8") as out:
        for line in lines:
            out.write(json.dumps(state.lines[line.number].outcome) + "\n")


def count(lines: Sequence[InputLine], state: BatchState) -> BatchCounts:
    statuses = [_final_status(state, line) for line in lines]
    return BatchCounts(
        total=len(lines),
        complete=statuses.count("complete"),
        failed=sum(status in FAILED_STATUSES for status in statuses),
        pending_docs=statuses.count("pending_docs"),
    )


class BatchRunner:
    def __init__(
        self,
        client: AsyncStoryflowClient,
        lines: Sequence[InputLine],
        state: BatchState,
        state_path: Path,
        *,
        concurrency: int = 16,
        on_change: Callable[[BatchCounts], None] = lambda counts: None,
    ) -> None:
        self._client = client
        self._lines = lines
        self._state = state
        self._state_path = state_path
        self._poll_slots = asyncio.Semaphore(concurrency)
        self._on_change = on_change
        self._saved_at = 0.0

    async def run(self) -> BatchCounts:
        self._forget_stale_lines()
        self._reject_unparseable_lines()
        self._changed()
        try:
            await self._submit_and_follow()
        finally:
            save_state(self._state_path, self._state)
        return count(self._lines, self._state)

    def _forget_stale_lines(self) -> None:
        current = {line.number: line.fingerprint for line in self._lines}
        self._state.lines = {
            number: entry for number, entry in self._state.lines.items() if current.get(number) == entry.fingerprint
        }

    def _reject_unparseable_lines(self) -> None:
        for line in self._lines:
            if line.body is None and line.number not in self._state.lines:
                self._state.lines[line.number] = _invalid_state(line, line.problem or "not a run body")

    async def _submit_and_follow(self) -> None:
        schedule = self._client.poll_schedule
        delay = schedule.first_delay
        refused_rounds = 0
        while True:
            waiting = self._lines_to_submit()
            accepted = await self._submit(waiting)
            progressed = await self._poll_round(self._unfinished_lines())
            if progressed:
                self._changed(persist=time.monotonic() - self._saved_at >= PROGRESS_SAVE_INTERVAL)
            if not self._lines_to_submit() and not self._unfinished_lines():
                return
            refused_rounds = refused_rounds + 1 if waiting and not accepted and not progressed else 0
            if refused_rounds >= MAX_REFUSED_ROUNDS:
                raise StoryflowError(None, f"the server keeps refusing runs (queue full); {len(waiting)} not submitted")
            await asyncio.sleep(delay)
            delay = schedule.first_delay if accepted or progressed else schedule.next_delay(delay)

    def _lines_to_submit(self) -> list[InputLine]:
        return [line for line in self._lines if line.number not in self._state.lines]

    def _unfinished_lines(self) -> list[int]:
        return [
            line.number
            for line in self._lines
            if line.number in self._state.lines and not self._state.lines[line.number].is_final
        ]

    async def _submit(self, lines: list[InputLine]) -> int:
        accepted = 0
        for chunk in _chunks(lines, MAX_BATCH_SIZE):
            accepted += await self._submit_chunk(chunk)
        return accepted

    async def _submit_chunk(self, chunk: list[InputLine]) -> int:
        items = await self._batch_with_retries([line.body or {} for line in chunk])
        if len(items) != len(chunk):
            raise StoryflowError(None, f"server answered {len(items)} items for a batch of {len(chunk)}")
        accepted = 0
        for line, item in zip(chunk, items, strict=True):
            if not isinstance(item, BatchRejected):
                self._state.lines[line.number] = _state_from_batch_item(line, item)
                accepted += 1
        self._changed()
        return accepted

    async def _batch_with_retries(self, bodies: list[dict[str, Any]]) -> list[BatchItem]:
        for attempt in range(1, SUBMIT_ATTEMPTS + 1):
            try:
                return await self._client.batch(bodies)
            except StoryflowError as exc:
                if exc.status_code != UNAVAILABLE or attempt == SUBMIT_ATTEMPTS:
                    raise
                await asyncio.sleep(min(exc.retry_after or float(attempt), MAX_RETRY_AFTER))
        raise AssertionError("unreachable")

    async def _poll_round(self, numbers: Iterable[int]) -> bool:
        results = await asyncio.gather(*(self._poll_line(number) for number in numbers))
        return any(results)

    async def _poll_line(self, number: int) -> bool:
        entry = self._state.lines[number]
        async with self._poll_slots:
            try:
                record = await self._client.get(entry.job_id or "")
            except StoryflowError as exc:
                return self._note_poll_error(number, entry, exc)
        if record.status == entry.status and not record.is_finished:
            return False
        self._state.lines[number] = _state_from_record(number, entry, record)
        return True

    def _note_poll_error(self, number: int, entry: LineState, exc: StoryflowError) -> bool:
        if exc.status_code == UNAVAILABLE:
            return False
        if exc.status_code != NOT_FOUND:
            raise exc
        error = {"type": "NotFound", "message": "the server no longer knows this run (expired?)"}
        self._state.lines[number] = _final_state(
            entry.fingerprint, {"line": number, "job_id": entry.job_id, "status": "failed", "error": error}
        )
        return True

    def _changed(self, *, persist: bool = True) -> None:
        # Job ids are always saved at once (they prevent resubmission); finished outcomes only now
        # and then, as re-polling them after a crash is cheap and the state file can be large.
        if persist:
            save_state(self._state_path, self._state)
            self._saved_at = time.monotonic()
        self._on_change(count(self._lines, self._state))


def _parse_line(number: int, text: str) -> InputLine:
    fingerprint = hashlib.sha256(text.strip().encode()).hexdigest()
    try:
        body = json.loads(text)
    except ValueError as exc:
        return InputLine(number, fingerprint, None, f"line {number} is not valid JSON: {exc}")
    if not isinstance(body, dict):
        return InputLine(number, fingerprint, None, f"line {number} is not a JSON object")
    return InputLine(number, fingerprint, body)


def _chunks(lines: list[InputLine], size: int) -> Iterable[list[InputLine]]:
    for start in range(0, len(lines), size):
        yield lines[start : start + size]


def _final_status(state: BatchState, line: InputLine) -> str | None:
    entry = state.lines.get(line.number)
    return entry.status if entry is not None and entry.is_final else None


def _final_state(fingerprint: str, outcome: dict[str, Any]) -> LineState:
    return LineState(fingerprint=fingerprint, status=outcome["status"], job_id=outcome.get("job_id"), outcome=outcome)


def _invalid_state(line: InputLine, message: str) -> LineState:
    error = {"type": "InvalidRun", "message": message}
    return _final_state(line.fingerprint, {"line": line.number, "job_id": None, "status": "invalid", "error": error})


def _state_from_batch_item(line: InputLine, item: RunAccepted | PendingDocs | BatchInvalid) -> LineState:
    if isinstance(item, BatchInvalid):
        return _invalid_state(line, item.message)
    if isinstance(item, PendingDocs):
        outcome = {"line": line.number, "job_id": None, "status": "pending_docs", "pending_docs": item.pending_docs}
        return _final_state(line.fingerprint, outcome)
    return LineState(fingerprint=line.fingerprint, status=item.status, job_id=item.job_id)


def _state_from_record(number: int, entry: LineState, record: RunRecord) -> LineState:
    if record.is_finished:
        return _final_state(entry.fingerprint, {"line": number, **record.model_dump(mode="json")})
    return entry.model_copy(update={"status": record.status})
