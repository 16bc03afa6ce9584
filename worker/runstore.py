"""The run record in Redis and every transition of it, shared by the API and the workers."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

import orjson
from arq.jobs import serialize_job
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from infra import keys
from infra.redis import dumps_job
from infra.timeutil import now_iso, now_ms
from worker import scripts

RUN_FUNCTION = "run_flow"
# arq drops a job payload after this; a run may wait this long behind others of its story.
ARQ_JOB_TTL_MS = 7 * 86_400_000


class RunStatus(StrEnum):
    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    COMPLETE = "complete"
    FAILED = "failed"
    CANCELLED = "cancelled"


Event = tuple[str, dict[str, Any]]  # (name, data) of a run event
TERMINAL = frozenset({RunStatus.COMPLETE, RunStatus.FAILED, RunStatus.CANCELLED})
RECORD_FIELDS = (
    "job_id", "status", "flow", "story_id", "attempts", "enqueued_at", "started_at",
    "finished_at", "progress", "result", "outputs", "error",
)  # fmt: skip
_QUOTED_FIELDS = [f'"{name}":'.encode() for name in RECORD_FIELDS]


@dataclass(frozen=True)
class SubmitOutcome:
    status: Literal["queued", "existing", "full", "too_many_active", "rate_limited"]
    job_id: str  # for rate limits: the seconds to wait


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


def _j(value: Any) -> str:
    return orjson.dumps(value).decode()


def _flatten(fields: dict[str, Any]) -> list[str]:
    flat: list[str] = []
    for name, value in fields.items():
        flat += [name, _j(value)]
    return flat


def _parse_cursor(cursor: str | None) -> tuple[int, str] | None:
    if not cursor:
        return None
    score, _, job_id = cursor.partition(":")
    return int(score), job_id


def _flatten_events(events: list[Event]) -> list[str]:
    flat: list[str] = []
    for name, data in events:
        flat += [name, _j(data)]
    return flat


def idempotency_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class RunStore:
    def __init__(
        self, redis: Redis, *, result_ttl: int, max_queued: int, max_active_per_tenant: int = 0,
        submissions_per_minute: int = 0,
    ) -> None:  # fmt: skip
        self.redis = redis
        self.result_ttl = result_ttl
        self.max_queued = max_queued
        self.max_active_per_tenant = max_active_per_tenant
        self.submissions_per_minute = submissions_per_minute
        self._submit = redis.register_script(scripts.SUBMIT)
        self._begin = redis.register_script(scripts.BEGIN)
        self._renew = redis.register_script(scripts.RENEW)
        self._progress = redis.register_script(scripts.PROGRESS)
        self._finish = redis.register_script(scripts.FINISH)
        self._requeue = redis.register_script(scripts.REQUEUE)
        self._cancel = redis.register_script(scripts.CANCEL)

    # --- API side -------------------------------------------------------------------------

    def submit_args(
        self, tenant: str, job_id: str, *, flow: str, story_id: str, input: str, total: int,
        idempotency_key: str | None,
    ) -> tuple[list[str], list[Any]]:  # fmt: skip
        score = now_ms()
        payload = serialize_job(RUN_FUNCTION, (tenant, job_id, story_id, flow), {}, None, score, serializer=dumps_job)
        record = {
            "job_id": job_id, "tenant": tenant, "flow": flow, "story_id": story_id, "input": input,
            "status": RunStatus.QUEUED, "attempts": 0, "enqueued_at": now_iso(), "started_at": None,
            "finished_at": None, "progress": initial_progress(total), "result": None, "outputs": {},
            "error": None,
        }  # fmt: skip
        idem = keys.idempotency(tenant, idempotency_digest(idempotency_key)) if idempotency_key else ""
        script_keys = [
            keys.run(tenant, job_id), keys.story_queue(tenant, story_id), keys.arq_job(job_id),
            keys.ARQ_QUEUE, keys.WAKE_LIST, keys.runs_index(tenant),
            keys.story_runs_index(tenant, story_id), idem, keys.submissions_in_minute(tenant, score // 60_000),
        ]  # fmt: skip
        limits = [self.max_active_per_tenant, self.submissions_per_minute, 60 - (score // 1000) % 60]
        args = [job_id, payload, score, ARQ_JOB_TTL_MS, self.max_queued, self.result_ttl, *limits, *_flatten(record)]
        return script_keys, args

    async def submit(self, tenant: str, job_id: str, **fields: Any) -> SubmitOutcome:
        script_keys, args = self.submit_args(tenant, job_id, **fields)
        status, returned_id = await self._submit(keys=script_keys, args=args)
        return SubmitOutcome(status.decode(), returned_id.decode())

    async def submit_many(self, items: list[tuple[str, str, dict[str, Any]]]) -> list[SubmitOutcome]:
        """Submit (tenant, job_id, fields) items in one pipelined round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for tenant, job_id, fields in items:
                script_keys, args = self.submit_args(tenant, job_id, **fields)
                await self._submit(keys=script_keys, args=args, client=pipe)
            replies = await pipe.execute()
        return [SubmitOutcome(status.decode(), job_id.decode()) for status, job_id in replies]

    async def get(self, tenant: str, job_id: str) -> dict[str, Any] | None:
        values = await self.redis.hmget(keys.run(tenant, job_id), list(RECORD_FIELDS))  # type: ignore[misc]
        if values[0] is None:
            return None
        return {name: orjson.loads(raw) for name, raw in zip(RECORD_FIELDS, values, strict=True)}

    async def get_json(self, tenant: str, job_id: str) -> bytes | None:
        """The record as a JSON document, spliced from the stored JSON values without decoding them."""
        values = await self.redis.hmget(keys.run(tenant, job_id), list(RECORD_FIELDS))  # type: ignore[misc]
        if values[0] is None:
            return None
        return b"{" + b",".join(_QUOTED_FIELDS[i] + value for i, value in enumerate(values)) + b"}"

    async def get_many(self, tenant: str, job_ids: list[str]) -> list[dict[str, Any] | None]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hmget(keys.run(tenant, job_id), list(RECORD_FIELDS))
            rows = await pipe.execute()
        return [
            None if values[0] is None else dict(zip(RECORD_FIELDS, map(orjson.loads, values), strict=True))
            for values in rows
        ]

    async def list_page(
        self, tenant: str, *, story_id: str | None, status: str | None, limit: int, cursor: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Runs newest first from the tenant's (or story's) index, and the cursor of the next page.

        The cursor is `score:job_id` of the last run returned, so runs enqueued in the same
        millisecond are neither skipped nor repeated. Index entries of expired records are dropped.
        """
        index = keys.story_runs_index(tenant, story_id) if story_id else keys.runs_index(tenant)
        start_after = _parse_cursor(cursor)
        upper = str(start_after[0]) if start_after else "+inf"
        runs: list[dict[str, Any]] = []
        expired: list[str] = []
        last: tuple[int, str] | None = None
        offset = 0
        while len(runs) < limit:
            page = await self.redis.zrevrangebyscore(index, upper, "-inf", start=offset, num=limit * 2, withscores=True)
            if not page:
                break
            offset += len(page)
            entries = [(int(score), member.decode()) for member, score in page]
            if start_after:
                entries = [e for e in entries if e[0] < start_after[0] or e[1] < start_after[1]]
            records = await self.get_many(tenant, [job_id for _, job_id in entries])
            for entry, record in zip(entries, records, strict=True):
                if record is None:
                    expired.append(entry[1])
                elif status in (None, record["status"]):
                    runs.append(record)
                    last = entry
                    if len(runs) == limit:
                        break
        if expired:
            await self.redis.zrem(index, *expired)
        return runs, f"{last[0]}:{last[1]}" if last and len(runs) == limit else None

    async def cancel(self, tenant: str, job_id: str, story_id: str) -> str:
        """'cancelled', 'finished' (already terminal) or 'missing'."""
        script_keys = [
            keys.run(tenant, job_id), keys.run_lease(job_id), keys.run_events(tenant, job_id),
            keys.story_queue(tenant, story_id), keys.ARQ_QUEUE, keys.WAKE_LIST, keys.arq_job(job_id),
            keys.ARQ_ABORT_SET,
        ]  # fmt: skip
        outcome = await self._cancel(keys=script_keys, args=[job_id, now_ms(), self.result_ttl, _j(now_iso())])
        return str(outcome.decode())

    # --- worker side ----------------------------------------------------------------------

    async def queue_begin(
        self, pipe: Pipeline, tenant: str, job_id: str, story_id: str, token: str, *, lease_ms: int,
        max_attempts: int, first_node: str | None = None,
    ) -> None:  # fmt: skip
        """Queue the start of an attempt (take the lease) on `pipe`; read its reply with `begun`."""
        script_keys = [
            keys.run(tenant, job_id), keys.run_lease(job_id), keys.arq_in_progress(job_id),
            keys.run_events(tenant, job_id), keys.story_queue(tenant, story_id),
            keys.ARQ_QUEUE, keys.WAKE_LIST,
        ]  # fmt: skip
        args: list[str | int] = [token, lease_ms, _j(now_iso()), max_attempts, now_ms(), self.result_ttl, job_id]
        args.append(first_node or "")
        await self._begin(keys=script_keys, args=args, client=pipe)

    @staticmethod
    def begun(reply: list[Any], tenant: str, job_id: str, token: str) -> Attempt | str:
        """The attempt that started, or why none did: 'gone', 'skip' or 'exhausted'."""
        if reply[0] != b"run":
            return str(reply[0].decode())
        number, flow, story, run_input = reply[1], *(orjson.loads(v) for v in reply[2:5])
        return Attempt(tenant, job_id, token, int(number), flow, story, run_input)

    async def renew(self, job_id: str, token: str, lease_ms: int) -> bool:
        script_keys = [keys.run_lease(job_id), keys.arq_in_progress(job_id)]
        return bool(await self._renew(keys=script_keys, args=[token, lease_ms]))

    async def progress(
        self, attempt: Attempt, progress: dict[str, Any], outputs: dict[str, str], events: list[Event]
    ) -> bool:
        """Update the record's progress and append events, in one round trip; False if the lease was lost."""
        script_keys = [
            keys.run(attempt.tenant, attempt.job_id), keys.run_lease(attempt.job_id),
            keys.run_events(attempt.tenant, attempt.job_id),
        ]  # fmt: skip
        args = [attempt.token, _j(progress), _j(outputs), *_flatten_events(events)]
        return bool(await self._progress(keys=script_keys, args=args))

    async def _finish_attempt(
        self, attempt: Attempt, terminal: Event, fields: dict[str, Any], earlier: list[Event], memory_writes: list[str]
    ) -> bool:
        script_keys = [
            keys.run(attempt.tenant, attempt.job_id), keys.run_lease(attempt.job_id),
            keys.run_events(attempt.tenant, attempt.job_id), keys.story_queue(attempt.tenant, attempt.story_id),
            keys.ARQ_QUEUE, keys.WAKE_LIST,
        ]  # fmt: skip
        flat, earlier_flat = _flatten(fields), _flatten_events(earlier)
        event, data = terminal
        args: list[str | int] = [attempt.token, attempt.job_id, now_ms(), self.result_ttl, event, _j(data), len(flat)]
        args += [*flat, len(earlier_flat), *earlier_flat, *memory_writes]
        return bool(await self._finish(keys=script_keys, args=args))

    async def complete(
        self, attempt: Attempt, result: str | None, outputs: dict[str, str], progress: dict[str, Any],
        memory_writes: list[str], earlier: list[Event],
    ) -> bool:  # fmt: skip
        """Commit the result and the memory writes together; False if the lease was lost."""
        fields = {
            "status": RunStatus.COMPLETE, "finished_at": now_iso(), "result": result,
            "outputs": outputs, "progress": progress, "error": None,
        }  # fmt: skip
        return await self._finish_attempt(attempt, ("complete", {"result": result}), fields, earlier, memory_writes)

    async def fail(self, attempt: Attempt, error_type: str, message: str, earlier: list[Event] | None = None) -> bool:
        error = {"type": error_type, "message": message}
        fields = {
            "status": RunStatus.FAILED, "finished_at": now_iso(), "result": None, "outputs": {}, "error": error,
        }  # fmt: skip
        return await self._finish_attempt(attempt, ("failed", {"error": error}), fields, earlier or [], [])

    async def requeue(self, attempt: Attempt) -> bool:
        """Give the run back untouched (graceful shutdown): the attempt does not count."""
        script_keys = [keys.run(attempt.tenant, attempt.job_id), keys.run_lease(attempt.job_id), keys.WAKE_LIST]
        return bool(await self._requeue(keys=script_keys, args=[attempt.token]))
