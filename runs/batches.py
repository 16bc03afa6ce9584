"""Batches: a hash per batch whose counts the run scripts keep exact at every transition (common.lua
`batch_moved`), the batch's runs in a sorted set, and the tenant's batches newest first.

A batch's runs have job ids derived from the batch id and their place in it, so submitting the same
batch again (the same Idempotency-Key after a lost answer or a crash) finds the runs already there
instead of queueing them twice.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from redis.asyncio import Redis

from infra import keys
from infra.timeutil import now_iso, now_ms
from runs import scripts
from runs.store import webhook_state

COUNTED = (
    "queued", "in_progress", "awaiting_input", "complete", "failed", "cancelled", "pending_docs", "invalid",
    "rejected",
)  # fmt: skip
_FIELDS = ("batch_id", "created_at", "total", "finished", "webhook", *COUNTED)


def batch_job_id(batch_id: str, position: int) -> str:
    return hashlib.sha256(f"{batch_id}:{position}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Opened:
    status: Literal["created", "existing", "mismatch"]
    batch_id: str


def _decode(values: list[bytes | None]) -> dict[str, Any]:
    raw = dict(zip(_FIELDS, values, strict=True))
    return {
        "batch_id": raw["batch_id"].decode() if raw["batch_id"] else None,
        "created_at": orjson.loads(raw["created_at"] or b"null"),
        "total": int(raw["total"] or 0),
        "counts": {name: int(raw[name] or 0) for name in COUNTED},
        "finished": raw["finished"] == b"1",
        "webhook": orjson.loads(raw["webhook"] or b"null"),
    }


class BatchStore:
    def __init__(self, redis: Redis, *, result_ttl: int) -> None:
        self.redis = redis
        self.result_ttl = result_ttl
        self._open = redis.register_script(scripts.plain("batch_open"))
        self._seal = redis.register_script(scripts.source("batch_seal"))

    async def open(
        self, tenant: str, batch_id: str, *, total: int, webhook: str | None, idempotency_key: str | None,
        digest: str,
    ) -> Opened:  # fmt: skip
        idem = (
            keys.batch_idempotency(tenant, hashlib.sha256(idempotency_key.encode()).hexdigest())
            if idempotency_key
            else ""
        )
        args: list[Any] = [
            batch_id, orjson.dumps(now_iso()), total, orjson.dumps(webhook) if webhook else "", digest,
            self.result_ttl, now_ms(), orjson.dumps(webhook_state(webhook) if webhook else None),
        ]  # fmt: skip
        status, found = await self._open(
            keys=[keys.batch(tenant, batch_id), keys.batches_index(tenant), idem], args=args
        )
        return Opened(status.decode(), found.decode())

    async def seal(self, tenant: str, batch_id: str, *, counts: dict[str, int], items: list[Any]) -> None:
        script_keys = [
            keys.batch(tenant, batch_id), keys.WEBHOOKS_DUE, keys.WEBHOOKS_DATA, keys.WEBHOOKS_WAKE, keys.WEBHOOKS_SEQ,
        ]  # fmt: skip
        args: list[Any] = [
            now_ms(), orjson.dumps(now_iso()), self.result_ttl, counts["pending_docs"], counts["invalid"],
            counts["rejected"], orjson.dumps(items),
        ]  # fmt: skip
        await self._seal(keys=script_keys, args=args)

    async def items(self, tenant: str, batch_id: str) -> list[Any] | None:
        """The answer POST /batches gave, once the batch was sealed."""
        raw = await self.redis.hget(keys.batch(tenant, batch_id), "items")  # type: ignore[misc]
        return None if raw is None else list(orjson.loads(raw))

    async def get(self, tenant: str, batch_id: str) -> dict[str, Any] | None:
        values = await self.redis.hmget(keys.batch(tenant, batch_id), list(_FIELDS))  # type: ignore[misc]
        return None if values[0] is None else _decode(values)

    async def list_recent(self, tenant: str, limit: int) -> list[dict[str, Any]]:
        """The tenant's batches, newest first; the expired ones leave the index as they are met."""
        ids = await self.redis.zrevrange(keys.batches_index(tenant), 0, limit - 1)
        async with self.redis.pipeline(transaction=False) as pipe:
            for batch_id in ids:
                pipe.hmget(keys.batch(tenant, batch_id.decode()), list(_FIELDS))
            rows = await pipe.execute()
        gone = [batch_id for batch_id, values in zip(ids, rows, strict=True) if values[0] is None]
        if gone:
            await self.redis.zrem(keys.batches_index(tenant), *gone)
        return [_decode(values) for values in rows if values[0] is not None]

    async def run_ids(self, tenant: str, batch_id: str) -> list[str]:
        return [job_id.decode() for job_id in await self.redis.zrange(keys.batch_runs(tenant, batch_id), 0, -1)]
