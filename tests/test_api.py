"""The HTTP contract of the API, against a real Redis (no worker needed)."""

from __future__ import annotations

import httpx
import pytest
from redis.asyncio import Redis

from infra import keys

RUN = {"input": "Users want PDF export.", "story_id": "story-1"}


async def test_submit_queues_a_run_with_location(client: httpx.AsyncClient, redis: Redis) -> None:
    response = await client.post("/run", json=RUN)
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "queued" and body["pending_docs"] is None
    assert len(body["job_id"]) == 32 and int(body["job_id"], 16) >= 0
    assert response.headers["location"] == f"/run/{body['job_id']}"
    assert await redis.zscore(keys.ARQ_QUEUE, body["job_id"]) is not None


async def test_new_run_record_is_queued(client: httpx.AsyncClient) -> None:
    job_id = (await client.post("/run", json=RUN)).json()["job_id"]
    record = (await client.get(f"/run/{job_id}")).json()
    assert record == {
        "job_id": job_id, "status": "queued", "flow": "default", "story_id": "story-1", "attempts": 0,
        "enqueued_at": record["enqueued_at"], "started_at": None, "finished_at": None,
        "progress": {"done": [], "current": None, "total": 2}, "result": None, "outputs": {}, "error": None,
        "steps": [], "awaiting": None, "batch_id": None, "webhook": None,
        "usage": {
            "prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0, "calls": 0, "cost_usd": None, "by_agent": {},
        },
    }  # fmt: skip
    assert record["enqueued_at"].endswith("Z")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"story_id": "s"}, "input"),
        ({"input": "", "story_id": "s"}, "input"),
        ({"input": 5, "story_id": "s"}, "input"),
        ({"input": "x"}, "story_id"),
        ({"input": "x", "story_id": ""}, "story_id"),
        ({"input": "x", "story_id": "-starts-with-dash"}, "story_id"),
        ({"input": "x", "story_id": "a/../b"}, "story_id"),
        ({"input": "x", "story_id": "line\nbreak"}, "story_id"),
        ({"input": "x", "story_id": "trailing\n"}, "story_id"),
        ({"input": "x", "story_id": "é"}, "story_id"),
        ({"input": "x", "story_id": "a" * 129}, "story_id"),
        ({"input": "x", "story_id": "s", "extra": 1}, "extra"),
    ],
)
async def test_invalid_bodies_get_422_naming_the_field(client: httpx.AsyncClient, body: dict, field: str) -> None:
    response = await client.post("/run", json=body)
    assert response.status_code == 422
    assert any(field in error["loc"] for error in response.json()["detail"])


async def test_not_json_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post("/run", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422


async def test_unknown_flow_lists_the_known_flows(client: httpx.AsyncClient) -> None:
    response = await client.post("/run", json={**RUN, "flow": "nope"})
    assert response.status_code == 422
    message = response.json()["detail"][0]["msg"]
    assert "'nope'" in message and "default" in message and "story" in message


async def test_input_over_the_byte_limit_is_422_and_far_over_is_413(client: httpx.AsyncClient) -> None:
    at_limit = "é" * (65536 // 2)
    assert (await client.post("/run", json={**RUN, "input": at_limit})).status_code == 202
    over = await client.post("/run", json={**RUN, "input": at_limit + "x"})
    assert over.status_code == 422 and "65536" in over.json()["detail"][0]["msg"]
    far_over = await client.post("/run", json={**RUN, "input": "x" * 2_000_000})
    assert far_over.status_code == 413


async def test_missing_documents_answer_pending_docs_and_enqueue_nothing(
    client: httpx.AsyncClient, redis: Redis
) -> None:
    await client.put("/docs/prd", json={"content": "The PRD."})
    response = await client.post("/run", json={**RUN, "flow": "story"})
    assert response.status_code == 200
    assert response.json() == {"job_id": None, "status": "pending_docs", "pending_docs": ["architecture"]}
    assert await redis.zcard(keys.ARQ_QUEUE) == 0
    assert await redis.keys("sf:t:*:run:*") == []


async def test_story_flow_is_queued_once_documents_exist(client: httpx.AsyncClient) -> None:
    for doc_id in ("prd", "architecture"):
        assert (await client.put(f"/docs/{doc_id}", json={"content": f"the {doc_id}"})).status_code == 201
    response = await client.post("/run", json={**RUN, "flow": "story"})
    assert response.status_code == 202


async def test_unknown_or_malformed_job_ids_are_404(client: httpx.AsyncClient) -> None:
    assert (await client.get("/run/" + "0" * 32)).status_code == 404
    assert (await client.get("/run/not-a-job")).status_code == 404
    assert (await client.delete("/run/" + "0" * 32)).status_code == 404


async def test_flows_lists_agents_and_required_documents(client: httpx.AsyncClient) -> None:
    flows = {flow["name"]: flow for flow in (await client.get("/flows")).json()}
    line = {"agent": "analyst", "next": "summarizer", "on": None, "human": None, "max_visits": 5}
    assert flows["default"] == {
        "name": "default", "agents": ["analyst", "summarizer"], "requires_docs": [],
        "graph": {
            "start": "analyst", "nodes": {"analyst": line, "summarizer": {**line, "agent": "summarizer", "next": None}},
        },
    }  # fmt: skip
    story = flows["story"]
    assert story["agents"] == ["sm", "dev", "qa"] and story["requires_docs"] == ["prd", "architecture"]
    assert story["graph"]["nodes"]["qa"] == {
        "agent": "qa", "next": None, "on": {"approve": None, "revise": "dev"}, "human": None, "max_visits": 3,
    }  # fmt: skip
    approval = flows["story_approval"]["graph"]["nodes"]["po"]
    assert approval == {
        "agent": None, "next": None, "on": {"approve": "dev", "reject": None}, "human": "Approve the story draft?",
        "max_visits": 5,
    }  # fmt: skip


async def test_documents_crud(client: httpx.AsyncClient) -> None:
    created = await client.put("/docs/prd", json={"content": "v1"})
    assert created.status_code == 201 and created.json()["content"] == "v1"
    updated = await client.put("/docs/prd", json={"content": "v2"})
    assert updated.status_code == 200
    fetched = (await client.get("/docs/prd")).json()
    assert fetched["doc_id"] == "prd" and fetched["content"] == "v2" and fetched["updated_at"].endswith("Z")
    assert [doc["doc_id"] for doc in (await client.get("/docs")).json()] == ["prd"]
    assert (await client.delete("/docs/prd")).status_code == 204
    assert (await client.get("/docs/prd")).status_code == 404
    assert (await client.delete("/docs/prd")).status_code == 404
    assert (await client.get("/docs")).json() == []


@pytest.mark.parametrize("doc_id", ["..%2Fetc", "a:b", "%C3%A9", "a%0Ab", "-x"])
async def test_document_ids_follow_the_story_id_pattern(client: httpx.AsyncClient, doc_id: str) -> None:
    assert (await client.put(f"/docs/{doc_id}", json={"content": "x"})).status_code in (404, 422)
    assert (await client.get(f"/docs/{doc_id}")).status_code in (404, 422)


async def test_document_body_must_have_content(client: httpx.AsyncClient) -> None:
    assert (await client.put("/docs/prd", json={"text": "x"})).status_code == 422


async def test_memory_of_an_unknown_story_is_404(client: httpx.AsyncClient) -> None:
    assert (await client.get("/memory/nobody")).status_code == 404
    assert (await client.delete("/memory/nobody")).status_code == 404


async def test_healthz_needs_nothing(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200 and response.json()["status"] == "ok"


async def test_readyz_without_a_worker_is_503_with_reason(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 503
    assert "worker" in response.json()["reason"]


async def test_idempotency_key_returns_the_first_run(client: httpx.AsyncClient, redis: Redis) -> None:
    headers = {"Idempotency-Key": "order-42"}
    first = await client.post("/run", json=RUN, headers=headers)
    second = await client.post("/run", json=RUN, headers=headers)
    assert first.status_code == second.status_code == 202
    assert first.json()["job_id"] == second.json()["job_id"]
    assert await redis.zcard(keys.ARQ_QUEUE) == 1
    # The same key with another body is a client's mistake, not a replay: 422, and nothing is queued.
    for changed in ({**RUN, "input": "different"}, {**RUN, "story_id": "story-2"}, {**RUN, "flow": "story"}):
        refused = await client.post("/run", json=changed, headers=headers)
        if changed.get("flow") == "story":
            assert refused.json()["status"] == "pending_docs"  # documents are checked first
            continue
        assert refused.status_code == 422, refused.text
        assert "Idempotency-Key" in refused.json()["detail"][0]["msg"]
    assert await redis.zcard(keys.ARQ_QUEUE) == 1
    other = await client.post("/run", json=RUN, headers={"Idempotency-Key": "order-43"})
    assert other.json()["job_id"] != first.json()["job_id"]


async def test_batch_answers_each_item_in_order(client: httpx.AsyncClient, redis: Redis) -> None:
    runs = [RUN, {"input": ""}, {**RUN, "flow": "story"}, {**RUN, "flow": "nope"}, {**RUN, "story_id": "b"}]
    response = await client.post("/runs/batch", json={"runs": runs})
    assert response.status_code == 200
    answers = response.json()
    assert [a["status"] for a in answers] == ["queued", "invalid", "pending_docs", "invalid", "queued"]
    assert answers[2]["pending_docs"] == ["prd", "architecture"]
    assert "known flows" in str(answers[3]["error"])
    assert await redis.zcard(keys.ARQ_QUEUE) == 2


async def test_batch_over_the_limit_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post("/runs/batch", json={"runs": [RUN] * 1001})
    assert response.status_code == 422


async def test_listing_is_newest_first_and_filters(client: httpx.AsyncClient) -> None:
    ids = [(await client.post("/run", json={**RUN, "story_id": f"s{i % 2}"})).json()["job_id"] for i in range(5)]
    listed = (await client.get("/runs")).json()
    assert [run["job_id"] for run in listed] == ids[::-1]
    by_story = (await client.get("/runs", params={"story_id": "s1"})).json()
    assert [run["job_id"] for run in by_story] == [ids[3], ids[1]]
    assert (await client.get("/runs", params={"status": "complete"})).json() == []
    page = await client.get("/runs", params={"limit": 2})
    assert [run["job_id"] for run in page.json()] == ids[:2:-1]
    rest = await client.get("/runs", params={"limit": 10, "cursor": page.headers["x-next-cursor"]})
    assert [run["job_id"] for run in rest.json()] == ids[2::-1]


async def test_pages_do_not_skip_or_repeat_runs_of_the_same_millisecond(client: httpx.AsyncClient) -> None:
    answers = (await client.post("/runs/batch", json={"runs": [RUN] * 10})).json()
    submitted = {answer["job_id"] for answer in answers}
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        page = await client.get("/runs", params={"limit": 3, **({"cursor": cursor} if cursor else {})})
        seen += [run["job_id"] for run in page.json()]
        cursor = page.headers.get("x-next-cursor")
        if not cursor:
            break
    assert len(seen) == 10 and set(seen) == submitted


async def test_a_malformed_cursor_is_422(client: httpx.AsyncClient) -> None:
    assert (await client.get("/runs", params={"cursor": "abc"})).status_code == 422


async def test_queue_over_its_limit_answers_503_and_enqueues_nothing(redis_url: str, redis: Redis) -> None:
    from tests.conftest import api_client, make_settings

    async for client in api_client(make_settings(redis_url, max_queued_runs=2)):
        assert [(await client.post("/run", json={**RUN, "story_id": f"s{i}"})).status_code for i in range(2)] == [
            202, 202,
        ]  # fmt: skip
        full = await client.post("/run", json={**RUN, "story_id": "s3"})
        assert full.status_code == 503 and full.headers["retry-after"]
        assert await redis.zcard(keys.ARQ_QUEUE) == 2


async def test_redis_unreachable_is_503_not_500(redis_url: str) -> None:
    from tests.conftest import api_client, make_settings

    async for client in api_client(make_settings("redis://127.0.0.1:1/0")):
        response = await client.post("/run", json=RUN)
        assert response.status_code == 503
        assert response.headers["retry-after"] and "unavailable" in response.json()["detail"]
        assert (await client.get("/run/" + "0" * 32)).status_code == 503
