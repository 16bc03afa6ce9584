"""Agents and flows only the tests load (STORYFLOW_AGENT_MODULES=tests.support.agents)."""

from __future__ import annotations

import asyncio
import time

from agents.base import Agent
from memory.manager import AgentMemory


class Boom(Agent):
    name = "boom"
    prompt = "Fail."

    async def exec_async(self, prep_res: object) -> str:
        raise ValueError("the boom agent always fails")


class Slow(Agent):
    name = "slow"
    prompt = "Take your time."

    async def exec_async(self, prep_res: object) -> str:
        await asyncio.sleep(float(getattr(prep_res, "input", "").split("sleep=")[-1] or 0))
        return "[slow] done"

    def remember(self, memory: AgentMemory, output: str) -> None:
        memory.story.set("slow_done", int(memory.story.get("slow_done", 0)) + 1)


class Blocker(Agent):
    name = "blocker"
    prompt = "Block the event loop."

    async def exec_async(self, prep_res: object) -> str:
        time.sleep(float(getattr(prep_res, "input", "").split("block=")[-1] or 0))
        return "[blocker] done"


FLOWS = {
    "explode": ("analyst", "boom"),
    "slow": ("slow",),
    "slow_then_summary": ("slow", "summarizer"),
    "blocking": ("blocker",),
}
