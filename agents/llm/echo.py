"""The `echo` provider: offline and deterministic, for demos, tests and load."""

from __future__ import annotations

import asyncio


class EchoLLM:
    """Offline and deterministic: answers with the agent's name and its input."""

    provider = "echo"

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay

    async def complete(self, *, agent: str, system: str, user: str) -> str:
        if self.delay:
            await asyncio.sleep(self.delay)
        return f"[{agent}] {user}"

    async def aclose(self) -> None:
        return None
