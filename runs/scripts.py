"""The Lua scripts of runs/lua, each with common.lua before it, loaded once per process."""

from __future__ import annotations

from functools import cache
from importlib.resources import files

_LUA = files("runs") / "lua"


@cache
def source(name: str) -> str:
    """The full text of script `name` (without .lua), common functions included."""
    return (_LUA / "common.lua").read_text() + "\n" + (_LUA / f"{name}.lua").read_text()


TRANSITIONS = (
    "submit", "begin", "renew", "progress", "finish", "await", "answer", "expire_input", "requeue", "cancel",
    "retry", "rearm",
)  # fmt: skip
