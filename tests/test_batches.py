"""Batches: submitted as one request, counts kept exact by the run scripts, one batch.finished webhook,
cancel and retry as one, idempotent resubmission, per tenant."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from standardwebhooks.webhooks import Webhook

from api.routes import batches as batches_route
from infra import keys
from infra.settings import Settings
from runs.batches import COUNTED
from runs.store import RunStore
from tests.conftest import api_client, make_settings, wait_for
from tests.support.receiver import Receiver
from tests.test_webhooks import SECRET, hook_settings

pytestmark = [pytest.mark.timeout(120)]


@pytest.fixture
def settings(redis_url: str, redis: Redis) -> Settings:
    return hook_settings(redis_url)


def runs(count: int, **body: str) -> list[dict[str, Any]]:
    return [{"input": f"Story part {i}.", "story_id": f"story-{i % 50}", **body} for i in range(count)]


async def create(client: httpx.AsyncClient, body: dict[str, Any], **headers: str) -> dict[str, Any]:
    response = await client.post("/batches", json=body, headers=headers)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def batch(client: httpx.AsyncClient, batch_id: str) -> dict[str, Any]:
    response = await client.get(f"/batches/{batch_id}")
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


async def until_finished(client: httpx.AsyncClient, batch_id: str, timeout: float = 60) -> dict[str, Any]:
    async def finished() -> dict[str, Any] | None:
        found = await batch(client, batch_id)
        return found if found["finished"] else None

    result: dict[str, Any] = await wait_for(finished, timeout=timeout, interval=0.2)
    return result


def zero_counts(**nonzero: int) -> dict[str, int]:
    return {name: nonzero.get(name, 0) for name in COUNTED}


async def test_a_1000_run_batch_converges_and_batch_finished_arrives_once(
    client: httpx.AsyncClient, background_worker: Any, receiver: Receiver, redis: Redis
) -> None:
    created = await create(client, {"runs": runs(1000), "webhook": receiver.url})
    assert len(created["items"]) == 1000 and all(item["status"] == "queued" for item in created["items"])
    batch_id = created["batch_id"]
    done = await until_finished(client, batch_id)
    assert done["total"] == 1000 and done["counts"] == zero_counts(complete=1000)

    async def delivered() -> bool:
        return len(receiver.of_type("batch.finished")) >= 1 and await redis.zcard(keys.WEBHOOKS_DUE) == 0

    await wait_for(delivered, timeout=30)
    finished = receiver.of_type("batch.finished")
    assert len(finished) == 1
    event = Webhook(SECRET).verify(finished[0].body, finished[0].headers)
    assert event["data"]["batch_id"] == batch_id and event["data"]["counts"]["complete"] == 1000
    assert event["data"]["finished"] is True
    listed = await client.get("/runs", params={"batch_id": batch_id, "limit": 500})
    assert len(listed.json()) == 500 and all(run["batch_id"] == batch_id for run in listed.json())
    rest = await client.get(
        "/runs", params={"batch_id": batch_id, "limit": 500, "cursor": listed.headers["x-next-cursor"]}
    )
    assert len({run["job_id"] for run in listed.json() + rest.json()}) == 1000


async def test_items_that_are_not_runs_are_counted_and_the_batch_still_finishes(
    client: httpx.AsyncClient, background_worker: Any
) -> None:
    body = {"runs": [*runs(3), {"input": "no story"}, {"flow": "story", "input": "x", "story_id": "s"}]}
    created = await create(client, body)
    assert [item["status"] for item in created["items"]] == ["queued"] * 3 + ["invalid", "pending_docs"]
    done = await until_finished(client, created["batch_id"])
    assert done["total"] == 5 and done["counts"] == zero_counts(complete=3, invalid=1, pending_docs=1)


async def test_a_batch_with_no_runs_at_all_is_finished_at_once(client: httpx.AsyncClient) -> None:
    created = await create(client, {"runs": [{"input": "no story"}]})
    assert (await batch(client, created["batch_id"]))["finished"] is True


async def test_cancel_a_batch_cancels_its_unfinished_runs(client: httpx.AsyncClient) -> None:
    created = await create(client, {"runs": runs(20)})  # no worker: all stay queued
    batch_id = created["batch_id"]
    assert (await batch(client, batch_id))["counts"] == zero_counts(queued=20)
    response = await client.delete(f"/batches/{batch_id}")
    assert response.status_code == 200
    assert response.json()["counts"] == zero_counts(cancelled=20) and response.json()["finished"] is True
    statuses = {run["status"] for run in (await client.get("/runs", params={"batch_id": batch_id})).json()}
    assert statuses == {"cancelled"}


async def test_retry_a_batch_retries_its_failed_runs(client: httpx.AsyncClient, background_worker: Any) -> None:
    created = await create(client, {"runs": [*runs(3, flow="explode"), *runs(2)]})
    batch_id = created["batch_id"]
    done = await until_finished(client, batch_id)
    assert done["counts"] == zero_counts(failed=3, complete=2)
    response = await client.post(f"/batches/{batch_id}/retry")
    assert response.status_code == 200
    assert response.json()["counts"]["failed"] == 0 and response.json()["finished"] is False
    again = await until_finished(client, batch_id)
    assert again["counts"] == zero_counts(failed=3, complete=2)
    attempts = [run["attempts"] for run in (await client.get("/runs", params={"batch_id": batch_id})).json()]
    assert sorted(attempts) == [1, 1, 2, 2, 2]


async def test_the_same_idempotency_key_answers_the_same_batch_and_queues_nothing_twice(
    client: httpx.AsyncClient,
) -> None:
    body = {"runs": runs(30)}
    first = await create(client, body, **{"Idempotency-Key": "nightly-2026-11-25"})
    again = await client.post("/batches", json=body, headers={"Idempotency-Key": "nightly-2026-11-25"})
    assert again.status_code == 200 and again.json() == first
    listed = (await client.get("/runs", params={"limit": 500})).json()
    assert len(listed) == 30
    assert (await batch(client, first["batch_id"]))["counts"]["queued"] == 30
    other = await client.post("/batches", json={"runs": runs(2)}, headers={"Idempotency-Key": "nightly-2026-11-25"})
    assert other.status_code == 422


async def test_a_submission_cut_short_is_completed_by_the_same_request_again(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As if Redis went away after part of the batch was queued: the client sends the same request
    again, the rest is queued, and the batch counts each run once."""
    monkeypatch.setattr(batches_route, "SUBMIT_CHUNK", 4)
    real_submit_many = RunStore.submit_many
    calls = 0
    first_done = asyncio.Event()

    async def submit_many_then_fail(self: RunStore, items: list[Any]) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            await first_done.wait()  # some of the batch is queued when Redis goes
            raise RedisConnectionError("Redis went away")
        outcomes = await real_submit_many(self, items)
        first_done.set()
        return outcomes

    monkeypatch.setattr(RunStore, "submit_many", submit_many_then_fail)
    body = {"runs": runs(10)}
    cut = await client.post("/batches", json=body, headers={"Idempotency-Key": "k1"})
    assert cut.status_code == 503
    assert 0 < len((await client.get("/runs")).json()) < 10
    again = await client.post("/batches", json=body, headers={"Idempotency-Key": "k1"})
    assert again.status_code == 200 and [item["status"] for item in again.json()["items"]] == ["queued"] * 10
    assert len((await client.get("/runs")).json()) == 10
    assert (await batch(client, again.json()["batch_id"]))["counts"] == zero_counts(queued=10)


async def test_another_tenants_batch_is_404(redis_url: str, redis: Redis) -> None:
    settings = make_settings(redis_url, api_keys="acme:acme-key-123,globex:globex-key-456")
    async for client in api_client(settings):
        acme = {"Authorization": "Bearer acme-key-123"}
        globex = {"Authorization": "Bearer globex-key-456"}
        created = await client.post("/batches", json={"runs": runs(2)}, headers=acme)
        batch_id = created.json()["batch_id"]
        assert (await client.get(f"/batches/{batch_id}", headers=globex)).status_code == 404
        assert (await client.delete(f"/batches/{batch_id}", headers=globex)).status_code == 404
        assert (await client.post(f"/batches/{batch_id}/retry", headers=globex)).status_code == 404
        assert (await client.get("/runs", params={"batch_id": batch_id}, headers=globex)).json() == []
        assert (await client.get("/batches", headers=globex)).json() == []
        assert [b["batch_id"] for b in (await client.get("/batches", headers=acme)).json()] == [batch_id]
        assert (await client.get(f"/batches/{batch_id}", headers=acme)).status_code == 200


async def test_bad_batches_are_refused_with_a_clear_4xx(client: httpx.AsyncClient) -> None:
    assert (await client.post("/batches", json={"runs": runs(10001)})).status_code == 422
    assert (await client.post("/batches", json={"runs": "nope"})).status_code == 422
    assert (await client.post("/batches", json={"runs": [], "extra": 1})).status_code == 422
    assert (await client.get("/batches/not-an-id")).status_code == 404
    assert (await client.get(f"/batches/{'0' * 32}")).status_code == 404


async def test_a_10000_run_batch_fits_in_one_request(client: httpx.AsyncClient) -> None:
    created = await create(client, {"runs": runs(10000)})
    assert len(created["items"]) == 10000
    assert (await batch(client, created["batch_id"]))["counts"]["queued"] == 10000


async def test_scripts_redis_lost_are_loaded_again_by_pipelines(
    client: httpx.AsyncClient, background_worker: Any, redis: Redis
) -> None:
    """Pipelined scripts go without SCRIPT EXISTS: after SCRIPT FLUSH (as after a restart that lost them)
    they are loaded and sent again, by the API (a batch) and by the worker (starting a run)."""
    await until_finished(client, (await create(client, {"runs": runs(2)}))["batch_id"])
    await redis.script_flush()
    created = await create(client, {"runs": runs(3)})
    assert [item["status"] for item in created["items"]] == ["queued"] * 3
    await redis.script_flush()
    done = await until_finished(client, created["batch_id"])
    assert done["counts"] == zero_counts(complete=3)


async def test_only_the_commands_redis_lacked_a_script_for_are_sent_again(redis: Redis, settings: Settings) -> None:
    """While another process loads the scripts, a pipeline's first scripts may fail (NOSCRIPT) and the
    rest run: sending it all again would submit those runs twice."""
    store = RunStore(redis, result_ttl=settings.result_ttl, max_queued=settings.max_queued_runs)
    await redis.script_flush()
    await redis.script_load(store._scripts["submit"].script)  # loaded; `cancel` is not
    fields = {"flow": "default", "story_id": "once", "input": "x", "total": 2, "idempotency_key": None}
    extra, args = store._submit_call("default", "a" * 32, **fields)

    async def build(pipe: Any) -> None:
        await store._call("submit", "default", "a" * 32, "once", args, extra_keys=extra, client=pipe)
        await store._call("cancel", "default", "b" * 32, "other", [], client=pipe)

    submitted, cancelled = await store.pipelined(build)
    assert submitted[0] == b"queued" and cancelled == b"missing"
    assert await redis.lrange(keys.story_queue("default", "once"), 0, -1) == [b"a" * 32]
