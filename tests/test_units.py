"""Fast unit tests of pure logic (fakeredis only where a store function needs a Redis shape)."""

from __future__ import annotations

from typing import Any

import fakeredis
import pytest

from agents.base import Agent, AgentTask
from agents.llm import Completion, OnText, Prompt, TransientLLMError
from agents.llm.echo import EchoLLM
from infra import keys
from infra.settings import Settings
from memory import store
from memory.manager import MemoryManager


def test_memory_reads_own_writes_and_isolates_agents() -> None:
    memory = MemoryManager({"analysis": "old"}, {"analyst": {"runs": 1}, "summarizer": {"secret": "s"}})
    analyst = memory.for_agent("analyst")
    analyst.story.set("analysis", "new")
    analyst.own.set("runs", 2)
    assert analyst.story.get("analysis") == "new" and analyst.own.get("runs") == 2
    summarizer = memory.for_agent("summarizer")
    assert summarizer.story.get("analysis") == "new", "the story scope is shared"
    assert summarizer.own.get("runs") is None and analyst.own.get("secret") is None
    assert memory.pending_writes() == ({"analysis": "new"}, {"analyst": {"runs": 2}})


def test_memory_writes_encode_to_their_scopes() -> None:
    memory = MemoryManager({}, {})
    memory.for_agent("qa").own.set("notes", ["a"])
    memory.for_agent("qa").story.set("review", "ok")
    memory.for_agent("qa").own.set("seen", 2)
    groups = store.encode_memory_writes("t", "s", memory)
    assert groups == [
        keys.story_memory("t", "s"), 1, "review", '"ok"',
        keys.memory_agents_index("t", "s"), 1, "qa", "true",
        keys.agent_memory("t", "s", "qa"), 2, "notes", '["a"]', "seen", "2",
    ]  # fmt: skip


class Flaky:
    provider = "flaky"
    model = "flaky"

    def __init__(self, failures: list[Exception]) -> None:
        self.failures = failures
        self.calls = 0

    async def complete(self, prompt: Prompt, on_text: OnText | None = None) -> Completion:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return Completion("ok", 1, 1, self.model)

    async def aclose(self) -> None:
        return None


class Probe(Agent):
    name = "probe"
    prompt = "p"


async def test_an_agent_does_not_retry_what_its_llm_client_gave_up_on() -> None:
    """One retry layer: the LLM client's. A TransientLLMError reaching the node fails the attempt at once."""
    exhausted = Flaky([TransientLLMError("429 after 4 attempts")])
    with pytest.raises(TransientLLMError):
        await Probe(exhausted)._exec(AgentTask("in", "sys"))
    assert exhausted.calls == 1


async def test_echo_names_the_agent_and_its_input_and_counts_words() -> None:
    completion = await EchoLLM().complete(Prompt("qa", "two words", "the plan"))
    assert completion == Completion("[qa] the plan", prompt_tokens=4, completion_tokens=3, model="echo")


async def test_echo_streams_word_by_word_and_the_pieces_join_to_the_answer() -> None:
    pieces: list[str] = []

    async def on_text(text: str, restart: bool) -> None:
        pieces.append(text)

    completion = await EchoLLM(delay=0.01).complete(Prompt("qa", "s", "a  multi\nline plan "), on_text)
    assert pieces == ["[qa] ", "a  ", "multi\n", "line ", "plan "]
    assert "".join(pieces) == completion.text


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ("the plan", "[qa] the plan\nACTION: approve"),  # no action line: the node's first action
        ("the plan\nACTION: revise", "[qa] the plan\nACTION: revise"),  # a valid one is kept
        ("the plan\nACTION: bogus", "[qa] the plan\nACTION: bogus\nACTION: approve"),
    ],
)
async def test_echo_ends_with_an_action_at_a_node_that_chooses(user: str, expected: str) -> None:
    completion = await EchoLLM().complete(Prompt("qa", "s", user, actions=("approve", "revise")))
    assert completion.text == expected


@pytest.mark.parametrize(
    "env",
    [
        {"redis_url": "http://example"}, {"max_input_bytes": 0}, {"job_timeout": -1},
        {"llm_provider": "claude"}, {"llm_provider": "openai"}, {"echo_delay": -1},
        {"worker_concurrency": 0}, {"max_batch_runs": 1001},
    ],
)  # fmt: skip
def test_bad_settings_fail_fast(env: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Settings(**env)


def test_api_keys_map_to_tenants() -> None:
    settings = Settings(api_keys="a:key-aaaa1,b:key-bbbb2")
    assert settings.keys_to_tenants == {"key-aaaa1": "a", "key-bbbb2": "b"} and settings.auth_enabled
    assert not Settings().auth_enabled


def test_no_name_that_reaches_a_key_can_contain_the_separator() -> None:
    import re

    from api.schemas import ID_PATTERN, JOB_ID_PATTERN
    from infra.settings import TENANT_PATTERN

    for pattern in (re.compile(ID_PATTERN), re.compile(JOB_ID_PATTERN), TENANT_PATTERN):
        assert not pattern.match("a:b") and not pattern.match("a:") and not pattern.match(":a")
    assert not keys.run("acme-evil", "x").startswith(keys.tenant_prefix("acme") + ":")


async def test_document_store_round_trip() -> None:
    redis = fakeredis.FakeAsyncRedis()
    doc, created = await store.put_document(redis, "t", "prd", "v1")
    assert created and doc.content == "v1"
    _, created_again = await store.put_document(redis, "t", "prd", "v2")
    assert not created_again
    fetched = await store.get_document(redis, "t", "prd")
    assert fetched is not None and fetched.content == "v2"
    assert [d.doc_id for d in await store.list_documents(redis, "t")] == ["prd"]
    assert await store.missing_documents(redis, "t", ["prd", "architecture"]) == ["architecture"]
    assert await store.missing_documents(redis, "other", ["prd"]) == ["prd"]
    assert await store.delete_document(redis, "t", "prd")
    assert await store.get_document(redis, "t", "prd") is None


def test_backoff_doubles_to_its_cap_and_starts_again_after_a_success() -> None:
    from infra.redis import Backoff

    backoff = Backoff(cap=1.0)
    assert [backoff.next() for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    backoff.reset()
    assert backoff.next() == 0.1
