"""Redis storage of documents and story memory, per tenant."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from infra import keys
from infra.timeutil import now_iso
from memory.manager import MemoryManager


@dataclass(frozen=True)
class Document:
    doc_id: str
    content: str
    updated_at: str


@dataclass(frozen=True)
class StoryContext:
    memory: MemoryManager
    docs: dict[str, str]
    missing_docs: list[str]


def _decode_hash(raw: dict[bytes, bytes]) -> dict[str, Any]:
    return {field.decode(): orjson.loads(value) for field, value in raw.items()}


async def put_document(redis: Redis, tenant: str, doc_id: str, content: str) -> tuple[Document, bool]:
    """Store a document; returns it and whether it was new."""
    doc = Document(doc_id, content, now_iso())
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(keys.document(tenant, doc_id), mapping={"content": content, "updated_at": doc.updated_at})
        pipe.sadd(keys.documents_index(tenant), doc_id)
        _, added = await pipe.execute()
    return doc, bool(added)


async def get_document(redis: Redis, tenant: str, doc_id: str) -> Document | None:
    raw = await redis.hgetall(keys.document(tenant, doc_id))  # type: ignore[misc]
    if not raw:
        return None
    return Document(doc_id, raw[b"content"].decode(), raw[b"updated_at"].decode())


async def list_documents(redis: Redis, tenant: str) -> list[Document]:
    doc_ids = sorted(member.decode() for member in await redis.smembers(keys.documents_index(tenant)))  # type: ignore[misc]
    async with redis.pipeline(transaction=False) as pipe:
        for doc_id in doc_ids:
            pipe.hmget(keys.document(tenant, doc_id), ["content", "updated_at"])
        rows = await pipe.execute()
    return [
        Document(doc_id, content.decode(), updated.decode())
        for doc_id, (content, updated) in zip(doc_ids, rows, strict=True)
        if content is not None
    ]


async def delete_document(redis: Redis, tenant: str, doc_id: str) -> bool:
    async with redis.pipeline(transaction=True) as pipe:
        pipe.delete(keys.document(tenant, doc_id))
        pipe.srem(keys.documents_index(tenant), doc_id)
        deleted, _ = await pipe.execute()
    return bool(deleted)


async def missing_documents(redis: Redis, tenant: str, doc_ids: list[str]) -> list[str]:
    if not doc_ids:
        return []
    present = await redis.smismember(keys.documents_index(tenant), doc_ids)  # type: ignore[misc]
    return [doc_id for doc_id, there in zip(doc_ids, present, strict=True) if not there]


def queue_story_context_reads(pipe: Pipeline, tenant: str, story_id: str, agents: list[str], doc_ids: list[str]) -> int:
    """Queue the reads of everything a run needs from storage on `pipe`; returns how many replies they make."""
    pipe.hgetall(keys.story_memory(tenant, story_id))
    for agent in agents:
        pipe.hgetall(keys.agent_memory(tenant, story_id, agent))
    for doc_id in doc_ids:
        pipe.hget(keys.document(tenant, doc_id), "content")
    return 1 + len(agents) + len(doc_ids)


def story_context_from(results: list[Any], agents: list[str], doc_ids: list[str]) -> StoryContext:
    """The replies of queue_story_context_reads, decoded."""
    story_raw, agent_raws, doc_raws = results[0], results[1 : 1 + len(agents)], results[1 + len(agents) :]
    memory = MemoryManager(
        _decode_hash(story_raw),
        {agent: _decode_hash(raw) for agent, raw in zip(agents, agent_raws, strict=True)},
    )
    docs = {doc_id: raw.decode() for doc_id, raw in zip(doc_ids, doc_raws, strict=True) if raw is not None}
    missing = [doc_id for doc_id in doc_ids if doc_id not in docs]
    return StoryContext(memory, docs, missing)


def encode_memory_writes(tenant: str, story_id: str, memory: MemoryManager) -> list[str | int]:
    """The run's memory writes for the commit script: per hash, its key, how many fields, then
    (field, JSON value) pairs; one HSET per hash."""
    story_writes, agent_writes = memory.pending_writes()
    groups: list[str | int] = []

    def add(key: str, fields: dict[str, str]) -> None:
        if fields:
            groups.extend([key, len(fields)])
            for field, value in fields.items():
                groups.extend([field, value])

    add(keys.story_memory(tenant, story_id), {f: orjson.dumps(v).decode() for f, v in story_writes.items()})
    add(keys.memory_agents_index(tenant, story_id), dict.fromkeys(agent_writes, "true"))
    for agent, writes in agent_writes.items():
        add(keys.agent_memory(tenant, story_id, agent), {f: orjson.dumps(v).decode() for f, v in writes.items()})
    return groups


async def read_memory(redis: Redis, tenant: str, story_id: str) -> dict[str, Any] | None:
    """{"story": {...}, "agents": {name: {...}}}, or None when the story has no memory."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.story_memory(tenant, story_id))
        pipe.hkeys(keys.memory_agents_index(tenant, story_id))
        story_raw, agent_names_raw = await pipe.execute()
    agent_names = sorted(name.decode() for name in agent_names_raw)
    async with redis.pipeline(transaction=False) as pipe:
        for agent in agent_names:
            pipe.hgetall(keys.agent_memory(tenant, story_id, agent))
        agent_raws = await pipe.execute()
    if not story_raw and not agent_names:
        return None
    agents = {agent: _decode_hash(raw) for agent, raw in zip(agent_names, agent_raws, strict=True)}
    return {"story": _decode_hash(story_raw), "agents": agents}


async def delete_memory(redis: Redis, tenant: str, story_id: str) -> bool:
    agent_names = [name.decode() for name in await redis.hkeys(keys.memory_agents_index(tenant, story_id))]  # type: ignore[misc]
    doomed = [keys.story_memory(tenant, story_id), keys.memory_agents_index(tenant, story_id)]
    doomed += [keys.agent_memory(tenant, story_id, agent) for agent in agent_names]
    return bool(await redis.delete(*doomed))
