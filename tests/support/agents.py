"""Agents and flows only the tests load (STORYFLOW_AGENT_MODULES=tests.support.agents)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from agents.base import Agent
from agents.graph import FlowGraph, NodeSpec
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


FLOWS: dict[str, tuple[str, ...] | FlowGraph] = {
    "explode": ("analyst", "boom"),
    "slow": ("slow",),
    "slow_then_summary": ("slow", "summarizer"),
    "blocking": ("blocker",),
}


class Crasher(Agent):
    """Kills its worker process mid-run, like an OOM kill or a segfault would."""

    name = "crasher"
    prompt = "Crash."

    async def exec_async(self, prep_res: object) -> str:
        os._exit(137)


class BlockOnce(Agent):
    """Blocks the event loop past the lease on its first attempt only (input: blockonce=SECONDS:MARKER)."""

    name = "blockonce"
    prompt = "Block once."

    async def exec_async(self, prep_res: object) -> str:
        seconds, marker = getattr(prep_res, "input", "").split("blockonce=")[-1].split(":", 1)
        if not Path(marker).exists():
            Path(marker).touch()
            time.sleep(float(seconds))
        return "[blockonce] done"

    def remember(self, memory: AgentMemory, output: str) -> None:
        memory.story.set("blockonce_commits", int(memory.story.get("blockonce_commits", 0)) + 1)


FLOWS.update({"crash": ("crasher",), "block_once": ("blockonce",)})

# A node whose first action loops back to itself: with echo it loops until max_visits.
FLOWS["loop"] = FlowGraph(
    "loop", "again", {"again": NodeSpec("again", "analyst", on={"again": "again", "done": None}, max_visits=2)}
)
# A person approves, then the slow agent runs (input: sleep=SECONDS): to kill a worker right after an answer.
FLOWS["approve_then_slow"] = FlowGraph(
    "approve_then_slow",
    "ask",
    {
        "ask": NodeSpec("ask", None, on={"go": "work", "stop": None}, human="Go?"),
        "work": NodeSpec("work", "slow", next=None),
    },
)
