"""The Lua scripts of runs/lua, each with common.lua before it, loaded once per process.

Every script that changes a run's status calls common.lua's `moved(before, after, ...)` (directly or
through `finish`): batch counts, webhooks and per-minute figures follow every transition from there.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from infra import keys
from runs.model import RECORD_FIELDS

_LUA = files("runs") / "lua"

TRANSITIONS = (
    "submit", "begin", "renew", "progress", "finish", "await", "answer", "expire_input", "requeue", "cancel",
    "retry", "rearm",
)  # fmt: skip


@cache
def common() -> str:
    text = (_LUA / "common.lua").read_text()
    text = text.replace("%RECORD_FIELDS%", ", ".join(f"'{name}'" for name in RECORD_FIELDS))
    return text.replace("%MINUTE_STATS_TTL_S%", str(keys.MINUTE_STATS_TTL_S))


@cache
def source(name: str) -> str:
    """The full text of script `name` (without .lua), common functions included."""
    return common() + "\n" + (_LUA / f"{name}.lua").read_text()


@cache
def plain(name: str) -> str:
    """A script that stands alone (no run keys, no common functions)."""
    return (_LUA / f"{name}.lua").read_text()
