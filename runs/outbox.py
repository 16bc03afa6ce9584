"""The webhook outbox in Redis: deliveries the run scripts queued (common.lua `queue_delivery`),
claimed for a while by a deliverer, and settled with the outcome of each attempt."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import orjson
from redis.asyncio import Redis

from infra import keys
from infra.timeutil import now_ms
from runs import scripts

Outcome = Literal["delivered", "retry", "failed", "release"]


@dataclass
class Delivery:
    id: str
    url: str
    owner: str  # the run record or batch hash that shows its outcome
    attempts: int
    body: bytes


class Outbox:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._claim = redis.register_script(scripts.plain("outbox_claim"))
        self._settle = redis.register_script(scripts.plain("outbox_settle"))

    async def claim(self, most: int, lease_ms: int) -> tuple[list[Delivery], int | None]:
        """Due deliveries (at most `most`), hidden from other deliverers for `lease_ms`; and when the
        next one is due (ms), if any."""
        reply = await self._claim(keys=[keys.WEBHOOKS_DUE, keys.WEBHOOKS_DATA], args=[now_ms(), most, lease_ms])
        flat, next_due = reply
        deliveries = []
        for i in range(0, len(flat), 3):
            meta = orjson.loads(flat[i + 1])
            deliveries.append(Delivery(flat[i].decode(), meta["url"], meta["owner"], meta["attempts"], flat[i + 2]))
        return deliveries, int(float(next_due)) if next_due else None

    async def settle(
        self, delivery: Delivery, outcome: Outcome, *, due_ms: int = 0, status: int | None = None,
        error: str | None = None,
    ) -> None:  # fmt: skip
        meta = {"url": delivery.url, "owner": delivery.owner, "attempts": delivery.attempts}
        state: dict[str, Any] = {
            "url": delivery.url, "delivered": outcome == "delivered", "attempts": delivery.attempts,
            "last_status": status, "last_error": error,
        }  # fmt: skip
        await self._settle(
            keys=[keys.WEBHOOKS_DUE, keys.WEBHOOKS_DATA, delivery.owner],
            args=[delivery.id, outcome, due_ms, orjson.dumps(meta), orjson.dumps(state)],
        )

    async def pending(self) -> int:
        return int(await self.redis.zcard(keys.WEBHOOKS_DUE))
