"""Rate limits of the LLM provider shared by every worker process, through Redis.

STORYFLOW_LLM_RPM (calls) and STORYFLOW_LLM_TPM (tokens, estimated before a call and corrected
after it) per STORYFLOW_LLM_RATE_WINDOW seconds (60: per minute), per model. One Lua script
reserves the moment each call may be sent (see ratelimit.lua): reservations come in increasing
order, so calls go first come, first served across the fleet, and a caller then waits on its own
clock, holding no Redis connection. A 429's `Retry-After` pauses the model's calls fleet-wide.

Why not the `limits` package: its strategies answer "may I, now?" (`hit`, `test`) and cannot take
back an estimate; waiting for capacity would mean polling Redis, and first come would not be
first served. A reservation in one script gives both in one round trip per call.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from importlib.resources import files

from redis.asyncio import Redis

from infra import keys

_SCRIPTS = files("agents.llm")
MIN_MARGIN_MS = 250


def _script(name: str) -> str:
    return (_SCRIPTS / name).read_text()


@dataclass(frozen=True)
class Reservation:
    call_id: str
    estimated_tokens: int
    wait_s: float  # how long the caller must wait before sending


class FleetRateLimiter:
    def __init__(self, redis: Redis, model: str, *, rpm: int, tpm: int, window_s: float) -> None:
        self.rpm, self.tpm = rpm, tpm
        self.window_ms = int(window_s * 1000)
        # The provider counts arrivals, which lag reservations by a varying time: a few ms on a warm
        # connection, 100 ms and more on a worker's first call (TLS, a new client). The margin keeps a
        # call's window clear of that, at 1 % of the rate on a minute's window.
        self.margin_ms = max(MIN_MARGIN_MS, self.window_ms // 100)
        self._keys = [keys.llm_calls(model), keys.llm_tokens(model), keys.llm_pause(model)]
        self._reserve = redis.register_script(_script("ratelimit.lua"))
        self._settle = redis.register_script(_script("ratelimit_settle.lua"))
        self._pause = redis.register_script(_script("ratelimit_pause.lua"))

    async def reserve(self, estimated_tokens: int) -> Reservation:
        call_id = uuid.uuid4().hex[:16]
        args: list[str | int] = [call_id, self.rpm, self.tpm, estimated_tokens, self.window_ms, self.margin_ms]
        at, now = await self._reserve(keys=self._keys, args=args)
        return Reservation(call_id, min(estimated_tokens, self.tpm) if self.tpm else 0, max(0, at - now) / 1000)

    async def settle(self, reservation: Reservation, used_tokens: int) -> None:
        """Replace the estimate with the tokens the call used (TPM only)."""
        if self.tpm and used_tokens != reservation.estimated_tokens:
            args: list[str | int] = [reservation.call_id, reservation.estimated_tokens, used_tokens]
            await self._settle(keys=[self._keys[1]], args=args)

    async def pause(self, seconds: float) -> None:
        await self._pause(keys=[self._keys[2]], args=[max(1, int(seconds * 1000))])
