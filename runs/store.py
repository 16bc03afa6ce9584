"""The run record in Redis and every transition of it, each one Lua script (runs/lua).

A record is a hash whose fields hold JSON values. A worker's writes are fenced by its lease: it
may report progress or end the run only while the lease key still holds its token.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from arq.jobs import serialize_job
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from infra import keys
from infra.redis import dumps_job
from infra.timeutil import now_iso, now_ms
from runs import scripts
from runs.model import (
    EVENTS_MAXLEN,
    RECORD_FIELDS,
    Attempt,
    Event,
    RunStatus,
    SubmitOutcome,
    empty_usage,
    initial_progress,
)

RUN_FUNCTION = "run_flow"
# arq drops a job payload after this; a run may wait this long behind others of its story.
ARQ_JOB_TTL_MS = 7 * 86_400_000
# The record with the fields only storyflow sees (RunStore.get_state).
STATE_FIELDS = (*RECORD_FIELDS, "checkpoint", "trail")
_QUOTED_FIELDS = [f'"{name}":'.encode() for name in RECORD_FIELDS]
EXPIRED_BATCH = 500
LIST_SCAN_FACTOR = 20


def _j(value: Any) -> str:
    return orjson.dumps(value).decode()


def _pairs(fields: dict[str, Any]) -> list[str]:
    flat: list[str] = []
    for name, value in fields.items():
        flat += [name, _j(value)]
    return flat


def _counted(values: list[str]) -> list[str | int]:
    return [len(values), *values]


def _events(events: list[Event]) -> list[str]:
    flat: list[str] = []
    for name, data in events:
        flat += [name, _j(data)]
    return flat


def _parse_cursor(cursor: str | None) -> tuple[int, str] | None:
    if not cursor:
        return None
    score, _, job_id = cursor.partition(":")
    return int(score), job_id


def idempotency_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def body_digest(flow: str, story_id: str, input: str) -> str:
    return hashlib.sha256(orjson.dumps([flow, story_id, input])).hexdigest()


def job_payload(tenant: str, job_id: str, story_id: str, flow: str) -> bytes:
    """arq's job payload for a run: what a worker needs to start it, without a read."""
    return serialize_job(RUN_FUNCTION, (tenant, job_id, story_id, flow), {}, None, now_ms(), serializer=dumps_job)


def webhook_state(url: str) -> dict[str, Any]:
    """A run's or batch's `webhook` before its first delivery."""
    return {"url": url, "delivered": False, "attempts": 0, "last_status": None, "last_error": None}


def _decode(values: list[bytes | None], names: tuple[str, ...] = RECORD_FIELDS) -> dict[str, Any]:
    return {name: None if raw is None else orjson.loads(raw) for name, raw in zip(names, values, strict=True)}


@dataclass(frozen=True)
class Begun:
    """What BEGIN hands the worker: the attempt, and where the run stands."""

    attempt: Attempt
    checkpoint: dict[str, Any] | None
    steps: list[dict[str, Any]]
    usage: dict[str, Any]
    trail: list[dict[str, Any]]
    progress: dict[str, Any] | None


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
        self._scripts: dict[str, AsyncScript] = {
            name: redis.register_script(scripts.source(name)) for name in scripts.TRANSITIONS
        }

    # --- the keys and arguments every transition takes (runs/lua/common.lua) ---------------

    @staticmethod
    def _run_keys(tenant: str, job_id: str, story_id: str) -> list[str]:
        return [
            keys.run(tenant, job_id), keys.run_events(tenant, job_id), keys.run_lease(job_id),
            keys.story_queue(tenant, story_id), keys.arq_job(job_id), keys.ARQ_QUEUE, keys.arq_in_progress(job_id),
            keys.WAKE_LIST, keys.active_runs(tenant), keys.METRICS, keys.EXPIRING, keys.AWAITING, keys.ARQ_ABORT_SET,
            keys.WEBHOOKS_DUE, keys.WEBHOOKS_DATA, keys.WEBHOOKS_WAKE, keys.WEBHOOKS_SEQ,
        ]  # fmt: skip

    def _run_argv(self, tenant: str, job_id: str, story_id: str) -> list[str | int]:
        member = f"{tenant}:{story_id}:{job_id}"
        return [
            job_id, f"{tenant}:{job_id}", member, keys.FINISHED_CHANNEL, now_ms(), self.result_ttl, _j(now_iso()),
            EVENTS_MAXLEN, tenant, keys.batch(tenant, ""), keys.MINUTE_STATS_PREFIX,
        ]  # fmt: skip

    async def _call(
        self, name: str, tenant: str, job_id: str, story_id: str, args: list[Any], *,
        extra_keys: list[str] | None = None, client: Pipeline | None = None,
    ) -> Any:  # fmt: skip
        """Run script `name` now, or queue it on `client` (a pipeline run by `pipelined`)."""
        script_keys = self._run_keys(tenant, job_id, story_id) + (extra_keys or [])
        script_args = self._run_argv(tenant, job_id, story_id) + args
        if client is not None:
            client.evalsha(self._scripts[name].sha, len(script_keys), *script_keys, *script_args)
            return None
        return await self._scripts[name](keys=script_keys, args=script_args)

    async def pipelined(self, build: Callable[[Pipeline], Awaitable[None]]) -> list[Any]:
        """The replies of the commands `build` queues, in one round trip. Scripts go as EVALSHA with no
        SCRIPT EXISTS round trip first (redis-py's way). If Redis did not have a script (a restart without
        its data, SCRIPT FLUSH), the scripts are loaded and only the commands that failed so are sent
        again: while another process loads them, a pipeline's first commands may fail and its last run."""
        async with self.redis.pipeline(transaction=False) as pipe:
            await build(pipe)
            commands = list(pipe.command_stack)
            replies = list(await pipe.execute(raise_on_error=False))
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            for script in self._scripts.values():
                await self.redis.script_load(script.script)
            async with self.redis.pipeline(transaction=False) as again:
                for i in missing:
                    args, options = commands[i]
                    again.execute_command(*args, **options)
                for i, reply in zip(missing, await again.execute(raise_on_error=False), strict=True):
                    replies[i] = reply
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    # --- API side -------------------------------------------------------------------------

    def _submit_call(
        self, tenant: str, job_id: str, *, flow: str, story_id: str, input: str, total: int,
        idempotency_key: str | None, batch_id: str | None = None, webhook: str | None = None,
    ) -> tuple[list[str], list[Any]]:  # fmt: skip
        score = now_ms()
        record = {
            "job_id": job_id, "tenant": tenant, "flow": flow, "story_id": story_id, "input": input,
            "status": RunStatus.QUEUED, "attempts": 0, "enqueued_at": now_iso(), "started_at": None,
            "finished_at": None, "progress": initial_progress(total), "result": None, "outputs": {},
            "error": None, "steps": [], "usage": empty_usage(), "awaiting": None, "batch_id": batch_id,
            "webhook": None if webhook is None else webhook_state(webhook),
        }  # fmt: skip
        if webhook is not None:
            record["webhook_url"] = webhook  # where the scripts send its events (common.lua `after_transition`)
        idem = keys.idempotency(tenant, idempotency_digest(idempotency_key)) if idempotency_key else ""
        extra = [
            keys.runs_index(tenant), keys.story_runs_index(tenant, story_id), idem or keys.idempotency(tenant, "-"),
            keys.submissions_in_minute(tenant, score // 60_000), keys.batch_runs(tenant, batch_id) if batch_id else "",
        ]  # fmt: skip
        limits = [self.max_active_per_tenant, self.submissions_per_minute, 60 - (score // 1000) % 60]
        args = [
            job_payload(tenant, job_id, story_id, flow), score, ARQ_JOB_TTL_MS, self.max_queued, self.result_ttl,
            *limits, "1" if idem else "0", body_digest(flow, story_id, input), *_pairs(record),
        ]  # fmt: skip
        return extra, args

    @staticmethod
    def _outcome(reply: list[bytes]) -> SubmitOutcome:
        status, value = reply[0].decode(), reply[1].decode()
        if status in ("too_many_active", "rate_limited"):
            return SubmitOutcome(status, None, int(value))  # type: ignore[arg-type]
        return SubmitOutcome(status, value or None)  # type: ignore[arg-type]

    async def submit(self, tenant: str, job_id: str, **fields: Any) -> SubmitOutcome:
        extra, args = self._submit_call(tenant, job_id, **fields)
        reply = await self._call("submit", tenant, job_id, fields["story_id"], args, extra_keys=extra)
        return self._outcome(reply)

    async def submit_many(self, items: list[tuple[str, str, dict[str, Any]]]) -> list[SubmitOutcome]:
        """Submit (tenant, job_id, fields) items in one pipelined round trip."""

        async def build(pipe: Pipeline) -> None:
            for tenant, job_id, fields in items:
                extra, args = self._submit_call(tenant, job_id, **fields)
                await self._call("submit", tenant, job_id, fields["story_id"], args, extra_keys=extra, client=pipe)

        return [self._outcome(reply) for reply in await self.pipelined(build)]

    async def get(self, tenant: str, job_id: str) -> dict[str, Any] | None:
        values = await self.redis.hmget(keys.run(tenant, job_id), list(RECORD_FIELDS))  # type: ignore[misc]
        return None if values[0] is None else _decode(values)

    async def get_json(self, tenant: str, job_id: str) -> bytes | None:
        """The record as a JSON document, spliced from the stored JSON values without decoding them."""
        values = await self.redis.hmget(keys.run(tenant, job_id), list(RECORD_FIELDS))  # type: ignore[misc]
        if values[0] is None:
            return None
        return b"{" + b",".join(_QUOTED_FIELDS[i] + (value or b"null") for i, value in enumerate(values)) + b"}"

    async def get_state(self, tenant: str, job_id: str) -> dict[str, Any] | None:
        """The record with the fields only storyflow sees (checkpoint, trail, attempts as stored)."""
        return (await self.get_states(tenant, [job_id]))[0]

    async def get_states(self, tenant: str, job_ids: list[str]) -> list[dict[str, Any] | None]:
        return await self._read_many(tenant, job_ids, STATE_FIELDS)

    async def get_many(self, tenant: str, job_ids: list[str]) -> list[dict[str, Any] | None]:
        return await self._read_many(tenant, job_ids, RECORD_FIELDS)

    async def _read_many(self, tenant: str, job_ids: list[str], names: tuple[str, ...]) -> list[dict[str, Any] | None]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hmget(keys.run(tenant, job_id), list(names))
            rows = await pipe.execute()
        return [None if values[0] is None else _decode(values, names) for values in rows]

    async def list_page(
        self, tenant: str, *, story_id: str | None, status: str | None, limit: int, cursor: str | None,
        batch_id: str | None = None, flow: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:  # fmt: skip
        """Runs newest first from the tenant's (or story's) index, and the cursor of the next page.

        The cursor is `score:job_id` of the last entry read, so runs enqueued in the same millisecond
        are neither skipped nor repeated. Expired records leave the indexes with `forget_expired`; the
        few met before that are dropped here. A page reads at most LIST_SCAN_FACTOR x limit entries
        (a filter by status may match few): then it ends early, with a cursor to go on.
        """
        if batch_id:
            index = keys.batch_runs(tenant, batch_id)
        else:
            index = keys.story_runs_index(tenant, story_id) if story_id else keys.runs_index(tenant)
        start_after = _parse_cursor(cursor)
        upper = str(start_after[0]) if start_after else "+inf"
        filters = (("status", status), ("story_id", story_id), ("flow", flow))
        runs: list[dict[str, Any]] = []
        expired: list[str] = []
        last: tuple[int, str] | None = None
        offset, budget = 0, LIST_SCAN_FACTOR * limit
        while len(runs) < limit and offset < budget:
            page = await self.redis.zrevrangebyscore(index, upper, "-inf", start=offset, num=limit * 2, withscores=True)
            if not page:
                break
            offset += len(page)
            entries = [(int(score), member.decode()) for member, score in page]
            if start_after:
                entries = [e for e in entries if e[0] < start_after[0] or e[1] < start_after[1]]
            records = await self.get_many(tenant, [job_id for _, job_id in entries])
            for entry, record in zip(entries, records, strict=True):
                last = entry
                if record is None:
                    expired.append(entry[1])
                elif all(want in (None, record[name]) for name, want in filters):
                    runs.append(record)
                    if len(runs) == limit:
                        break
        if expired:
            await self.redis.zrem(index, *expired)
        more = last is not None and (len(runs) == limit or offset >= budget)
        return runs, f"{last[0]}:{last[1]}" if more and last else None

    async def forget_expired(self) -> int:
        """Take expired runs out of the run indexes (any process may call it; it is idempotent)."""
        due = await self.redis.zrangebyscore(keys.EXPIRING, "-inf", now_ms(), start=0, num=EXPIRED_BATCH)
        if not due:
            return 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for member in due:
                tenant, story_id, job_id = member.decode().split(":")
                pipe.zrem(keys.runs_index(tenant), job_id)
                pipe.zrem(keys.story_runs_index(tenant, story_id), job_id)
            pipe.zrem(keys.EXPIRING, *due)
            await pipe.execute()
        return len(due)

    async def cancel(self, tenant: str, job_id: str, story_id: str) -> str:
        """'cancelled', 'finished' (already terminal) or 'missing'."""
        return str((await self._call("cancel", tenant, job_id, story_id, [])).decode())

    async def cancel_many(self, tenant: str, runs: list[tuple[str, str]]) -> list[str]:
        """Cancel (job_id, story_id) runs in one pipelined round trip; each answer as `cancel` gives it."""

        async def build(pipe: Pipeline) -> None:
            for job_id, story_id in runs:
                await self._call("cancel", tenant, job_id, story_id, [], client=pipe)

        return [reply.decode() for reply in await self.pipelined(build)]

    async def retry(self, tenant: str, record: dict[str, Any], fields: dict[str, Any], events: list[Event]) -> str:
        """'queued', 'not_finished', 'changed' or 'missing'; `fields` as runs/checkpoint.py computed them."""
        return (await self.retry_many(tenant, [(record, fields, events)]))[0]

    async def retry_many(
        self, tenant: str, runs: list[tuple[dict[str, Any], dict[str, Any], list[Event]]]
    ) -> list[str]:
        """Retry (record, fields, events) runs in one pipelined round trip."""

        async def build(pipe: Pipeline) -> None:
            for record, fields, events in runs:
                job_id, story_id = record["job_id"], record["story_id"]
                payload = job_payload(tenant, job_id, story_id, record["flow"])
                args = [
                    str(record["attempts"]), payload, ARQ_JOB_TTL_MS, *_counted(_pairs(fields)),
                    *_counted(_events(events)),
                ]  # fmt: skip
                await self._call("retry", tenant, job_id, story_id, args, client=pipe)

        return [reply.decode() for reply in await self.pipelined(build)]

    async def answer(
        self, tenant: str, record: dict[str, Any], awaiting_raw: str, fields: dict[str, Any], events: list[Event]
    ) -> str:
        """'queued' or 'not_awaiting'."""
        job_id, story_id = record["job_id"], record["story_id"]
        payload = job_payload(tenant, job_id, story_id, record["flow"])
        args = [awaiting_raw, payload, ARQ_JOB_TTL_MS, *_counted(_pairs(fields)), *_counted(_events(events))]
        return str((await self._call("answer", tenant, job_id, story_id, args)).decode())

    async def expire_inputs(self) -> int:
        """Fail the runs that awaited input past their deadline; returns how many."""
        due = await self.redis.zrangebyscore(keys.AWAITING, "-inf", now_ms(), start=0, num=EXPIRED_BATCH)
        error = {"type": "input_timeout", "message": "no answer came within STORYFLOW_INPUT_TIMEOUT"}
        expired = 0
        for member in due:
            tenant, story_id, job_id = member.decode().split(":")
            expired += int(await self._call("expire_input", tenant, job_id, story_id, [_j(error)]))
        return expired

    # --- worker side ----------------------------------------------------------------------

    async def queue_begin(
        self, pipe: Pipeline, tenant: str, job_id: str, story_id: str, token: str, *, lease_ms: int,
        max_attempts: int, first_node: str | None, first_agent: str | None,
    ) -> None:  # fmt: skip
        """Queue the start of an attempt (take the lease) on `pipe`; read its reply with `begun`."""
        first_step = ""
        if first_node is not None:
            step = {
                "node": first_node, "agent": first_agent, "visit": 1, "status": "running", "action": None,
                "output": None, "finished_at": None, "usage": None,
            }  # fmt: skip
            first_step = _j(step)[:-1]  # BEGIN adds the attempt and the start time, then the brace
        args = [token, lease_ms, max_attempts, first_node or "", first_step]
        await self._call("begin", tenant, job_id, story_id, args, client=pipe)

    @staticmethod
    def begun(reply: list[Any], tenant: str, job_id: str, token: str) -> Begun | str:
        """The attempt that started, and where its run stands; or why none did: 'gone', 'skip', 'exhausted'."""
        if reply[0] != b"run":
            return str(reply[0].decode())
        number = int(reply[1])
        flow, story, run_input = (orjson.loads(v) for v in reply[2:5])
        checkpoint, steps, usage, trail, progress = (orjson.loads(v) if v else None for v in reply[5:10])
        attempt = Attempt(tenant, job_id, token, number, flow, story, run_input)
        return Begun(attempt, checkpoint, steps or [], usage or empty_usage(), trail or [], progress)

    async def renew(self, attempt: Attempt, lease_ms: int) -> bool:
        return bool(await self._call("renew", *self._who(attempt), [attempt.token, lease_ms]))

    async def progress(self, attempt: Attempt, fields: dict[str, Any], events: list[Event]) -> bool:
        """Checkpoint and progress, and events, in one round trip; False if the lease was lost."""
        args = [attempt.token, *_counted(_pairs(fields)), *_events(events)]
        return bool(await self._call("progress", *self._who(attempt), args))

    async def finish(
        self, attempt: Attempt, terminal: Event, fields: dict[str, Any], earlier: list[Event],
        memory_writes: list[str | int] | None = None,
    ) -> bool:  # fmt: skip
        """End the run (complete or failed) with its fields, events and memory writes; False if the lease was lost."""
        event, data = terminal
        args = [
            attempt.token, event, _j(data), *_counted(_pairs(fields)), *_counted(_events(earlier)),
            *(memory_writes or []),
        ]  # fmt: skip
        return bool(await self._call("finish", *self._who(attempt), args, extra_keys=[keys.arq_retry(attempt.job_id)]))

    async def await_input(
        self, attempt: Attempt, deadline_ms: int, fields: dict[str, Any], events: list[Event]
    ) -> bool:
        args = [attempt.token, deadline_ms, *_counted(_pairs(fields)), *_counted(_events(events))]
        return bool(await self._call("await", *self._who(attempt), args, extra_keys=[keys.arq_retry(attempt.job_id)]))

    async def rearm(self, tenant: str, job_id: str, story_id: str, flow: str) -> bool:
        """Put a run queued again back in arq's queue if arq's cleanup of its last job took it away."""
        payload = job_payload(tenant, job_id, story_id, flow)
        return bool(await self._call("rearm", tenant, job_id, story_id, [payload, ARQ_JOB_TTL_MS]))

    async def requeue(self, attempt: Attempt) -> bool:
        """Give the run back (graceful stop): the attempt does not count; the next resumes from the checkpoint."""
        return bool(await self._call("requeue", *self._who(attempt), [attempt.token]))

    async def stream_tokens(self, batches: list[tuple[Attempt, list[Event]]]) -> None:
        """Token events of any number of runs in one round trip: plain appends (one command each), not
        fenced: they carry no state."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for attempt, events in batches:
                stream = keys.run_events(attempt.tenant, attempt.job_id)
                for name, data in events:
                    pipe.xadd(stream, {"event": name, "data": _j(data)}, maxlen=EVENTS_MAXLEN, approximate=True)
            await pipe.execute()

    @staticmethod
    def _who(attempt: Attempt) -> tuple[str, str, str]:
        return attempt.tenant, attempt.job_id, attempt.story_id
