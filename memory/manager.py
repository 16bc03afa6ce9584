"""Story memory as one run sees it: loaded once, read-your-writes, committed with the run.

Two scopes per story: ``story`` (every agent sees it) and each agent's own. Writes stay in this
object until the run completes; the worker then commits them in the same Redis transaction as the
run's result, so a failed, cancelled or fenced-off attempt leaves no trace.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any


class Scope:
    """One memory scope: the committed values overlaid with this run's writes."""

    def __init__(self, committed: Mapping[str, Any]) -> None:
        self._committed = dict(committed)
        self.writes: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        if key in self.writes:
            return self.writes[key]
        return self._committed.get(key, default)

    def set(self, key: str, value: Any) -> None:
        self.writes[key] = value

    def snapshot(self) -> dict[str, Any]:
        return {**self._committed, **self.writes}

    def __iter__(self) -> Iterator[str]:
        return iter(self.snapshot())


class AgentMemory:
    """What one agent may touch: the story scope and its own scope, nothing of other agents."""

    def __init__(self, story: Scope, own: Scope) -> None:
        self.story = story
        self.own = own


class MemoryManager:
    def __init__(self, story: Mapping[str, Any], agents: Mapping[str, Mapping[str, Any]]) -> None:
        self._story = Scope(story)
        self._agents = {name: Scope(values) for name, values in agents.items()}

    def for_agent(self, agent: str) -> AgentMemory:
        own = self._agents.setdefault(agent, Scope({}))
        return AgentMemory(self._story, own)

    def pending(self) -> dict[str, Any]:
        """This run's writes, as a checkpoint keeps them: {"story": {...}, "agents": {name: {...}}}."""
        story, agents = self.pending_writes()
        return {"story": story, "agents": agents}

    def restore(self, pending: dict[str, Any]) -> None:
        """Apply the writes of this run's earlier attempts (from its checkpoint): read-your-writes on resume."""
        self._story.writes.update(pending.get("story", {}))
        for agent, writes in pending.get("agents", {}).items():
            self._agents.setdefault(agent, Scope({})).writes.update(writes)

    def pending_writes(self) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        """(story scope writes, {agent: writes}) of this run, not yet committed."""
        agent_writes = {name: dict(scope.writes) for name, scope in self._agents.items() if scope.writes}
        return dict(self._story.writes), agent_writes
