"""Delivers the webhook outbox: every worker process drains it, each delivery signed per Standard Webhooks.

At least once: a delivery is claimed for longer than an attempt may take; if its deliverer dies, it
becomes due again and is sent with the same `webhook-id`. Attempts run concurrently (a slow receiver
holds one slot, never the loop), and at most PER_HOST_IN_FLIGHT per host at once, so one dead receiver
cannot take every slot from the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import Counter
from datetime import UTC, datetime

import httpx
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from standardwebhooks.webhooks import Webhook

from infra import keys, safe_url
from infra.redis import BLOCK_CHUNK_S, Backoff
from infra.settings import Settings
from infra.timeutil import now_ms
from runs.outbox import Delivery, Outbox, Outcome

logger = logging.getLogger("storyflow.webhooks")
PER_HOST_IN_FLIGHT = 8
BUSY_HOST_DELAY_MS = 500
CLAIM_MARGIN_MS = 5_000  # beyond the attempt's timeout, before a claimed delivery is due again (its deliverer died)
MAX_BACKOFF_S = 3600.0


def backoff_s(attempts: int, base: float) -> float:
    """Before attempt `attempts + 1`: base x 2^(attempts - 1), with full jitter over its upper half."""
    ceiling = min(MAX_BACKOFF_S, base * 2 ** max(0, attempts - 1))
    return float(ceiling / 2 + random.uniform(0, ceiling / 2))


class WebhookDeliverer:
    def __init__(self, redis: Redis, settings: Settings, http: httpx.AsyncClient | None = None) -> None:
        assert settings.webhook_secret is not None
        self.settings = settings
        self.redis = redis
        self.outbox = Outbox(redis)
        self.signer = Webhook(settings.webhook_secret.get_secret_value())
        # Our own client: no proxies from the environment (they would defeat the address check), no redirects.
        self.http = http or httpx.AsyncClient(
            timeout=settings.webhook_timeout, follow_redirects=False, trust_env=False,
            limits=httpx.Limits(max_connections=settings.webhook_concurrency),
        )  # fmt: skip
        self._in_flight: set[asyncio.Task[None]] = set()
        self._per_host: Counter[str] = Counter()
        self._slot_freed = asyncio.Event()
        self.delivered = 0

    async def run(self) -> None:
        """Deliver until cancelled; Redis outages are waited out."""
        backoff = Backoff()
        try:
            while True:
                try:
                    await self._round()
                    backoff = Backoff()
                except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                    delay = backoff.next()
                    logger.warning("webhook outbox unavailable (%s); retrying in %.1fs", exc, delay)
                    await asyncio.sleep(delay)
        finally:
            for task in self._in_flight:
                task.cancel()  # their deliveries come back when the claim runs out
            await asyncio.gather(*self._in_flight, return_exceptions=True)
            await self.http.aclose()

    async def _round(self) -> None:
        free = self.settings.webhook_concurrency - len(self._in_flight)
        next_due: int | None = None
        if free > 0:
            lease_ms = int(self.settings.webhook_timeout * 1000) + CLAIM_MARGIN_MS
            claimed, next_due = await self.outbox.claim(free, lease_ms)
            for delivery in claimed:
                await self._start(delivery)
            if len(claimed) == free:
                return  # there may be more due at once
        await self._wait(next_due)

    async def _wait(self, next_due: int | None) -> None:
        if len(self._in_flight) >= self.settings.webhook_concurrency:
            self._slot_freed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._slot_freed.wait(), BLOCK_CHUNK_S)
            return
        timeout = BLOCK_CHUNK_S if next_due is None else max(0.01, min(BLOCK_CHUNK_S, (next_due - now_ms()) / 1000))
        await self.redis.blpop([keys.WEBHOOKS_WAKE], timeout=timeout)  # type: ignore[arg-type,misc]

    async def _start(self, delivery: Delivery) -> None:
        host = httpx.URL(delivery.url).host
        if self._per_host[host] >= PER_HOST_IN_FLIGHT:
            await self.outbox.settle(delivery, "release", due_ms=now_ms() + BUSY_HOST_DELAY_MS)
            return
        self._per_host[host] += 1
        task = asyncio.create_task(self._deliver(delivery))
        self._in_flight.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            self._in_flight.discard(finished)
            self._per_host[host] -= 1
            self._slot_freed.set()

        task.add_done_callback(done)

    async def _deliver(self, delivery: Delivery) -> None:
        delivery.attempts += 1
        status, error = await self._attempt(delivery)
        outcome: Outcome
        if status is not None and 200 <= status < 300:
            outcome, due = "delivered", 0
            self.delivered += 1
        elif delivery.attempts >= self.settings.webhook_max_attempts:
            outcome, due = "failed", 0
            logger.warning("webhook %s to %s given up after %d attempts", delivery.id, delivery.url, delivery.attempts)
        else:
            outcome, due = (
                "retry",
                now_ms() + int(1000 * backoff_s(delivery.attempts, self.settings.webhook_retry_base)),
            )
        backoff = Backoff()
        while True:  # the attempt was made: its outcome must be recorded, or it would be repeated for nothing
            try:
                await self.outbox.settle(delivery, outcome, due_ms=due, status=status, error=error)
                return
            except (RedisConnectionError, RedisTimeoutError, OSError):
                await asyncio.sleep(backoff.next())

    async def _attempt(self, delivery: Delivery) -> tuple[int | None, str | None]:
        """(HTTP status, None) or (None, why no answer came)."""
        try:
            checked = await safe_url.check(delivery.url, allow_private=self.settings.webhook_allow_private)
        except safe_url.UnsafeURLError as exc:
            return None, str(exc)
        sent_at = datetime.now(UTC)
        headers = {
            "webhook-id": delivery.id,
            "webhook-timestamp": str(int(sent_at.timestamp())),
            "webhook-signature": self.signer.sign(delivery.id, sent_at, delivery.body.decode()),
            "content-type": "application/json",
            "user-agent": "storyflow-webhooks",
        }
        error = "no address to connect to"
        try:
            async with asyncio.timeout(self.settings.webhook_timeout):
                for address in checked.addresses:
                    request = safe_url.pinned_request(self.http, checked, address, delivery.body, headers)
                    try:
                        response = await self.http.send(request)
                    except httpx.ConnectError as exc:
                        error = f"ConnectError: {exc}"[:300]
                        continue
                    await response.aclose()
                    return response.status_code, None
        except TimeoutError:
            return None, f"no answer within {self.settings.webhook_timeout:g} s"
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: {exc}"[:300]
        return None, error
