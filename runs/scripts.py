"""The Lua scripts of runs/lua, each with common.lua before it, loaded once per process.

A script that may change a run's status runs inside a function, so that `after_transition`
(common.lua) sees the status before and after it: batch counts, webhooks and per-minute figures
follow every transition from one place, whatever the script.
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
# The scripts that may change a run's status.
STATUS_CHANGING = frozenset(
    {"submit", "begin", "finish", "await", "answer", "expire_input", "requeue", "cancel", "retry"}
)


@cache
def common() -> str:
    text = (_LUA / "common.lua").read_text()
    text = text.replace("%RECORD_FIELDS%", ", ".join(f"'{name}'" for name in RECORD_FIELDS))
    return text.replace("%MINUTE_STATS_TTL_S%", str(keys.MINUTE_STATS_TTL_S))


@cache
def source(name: str) -> str:
    """The full text of script `name` (without .lua), common functions included."""
    body = (_LUA / f"{name}.lua").read_text()
    if name in STATUS_CHANGING:
        body = (
            "local before_status = redis.call('HGET', R.record, 'status')\n"
            f"local function transition()\n{body}\nend\n"
            "local result = transition()\nafter_transition(before_status)\nreturn result\n"
        )
    return common() + "\n" + body


@cache
def plain(name: str) -> str:
    """A script that stands alone (no run keys, no common functions)."""
    return (_LUA / f"{name}.lua").read_text()
