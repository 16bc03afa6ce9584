"""API keys and tenant isolation: every route, two tenants, no way across."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from redis.asyncio import Redis

from infra.settings import Settings
from tests.conftest import api_client, drain, make_settings

KEYS = "acme:acme-key-123,acme-evil:evil-key-456"
ACME = {"Authorization": "Bearer acme-key-123"}
EVIL = {"X-API-Key": "evil-key-456"}
RUN = {"input": "secret plans", "story_id": "story-1"}


@pytest.fixture
def auth_settings(redis_url: str, redis: Redis) -> Settings:
    return make_settings(redis_url, api_keys=KEYS)


@pytest.fixture
async def http(auth_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async for client in api_client(auth_settings):
        yield client


ROUTES = [
    ("POST", "/run", RUN),
    ("GET", "/run/" + "0" * 32, None),
    ("DELETE", "/run/" + "0" * 32, None),
    ("GET", "/run/" + "0" * 32 + "/events", None),
    ("GET", "/runs", None),
    ("POST", "/runs/batch", {"runs": [RUN]}),
    ("GET", "/flows", None),
    ("PUT", "/docs/prd", {"content": "x"}),
    ("GET", "/docs/prd", None),
    ("GET", "/docs", None),
    ("DELETE", "/docs/prd", None),
    ("GET", "/memory/story-1", None),
    ("DELETE", "/memory/story-1", None),
    ("GET", "/readyz", None),
    ("POST", "/run/" + "0" * 32 + "/retry", None),
    ("POST", "/run/" + "0" * 32 + "/input", {"action": "approve"}),
]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong-key-000"}, {"Authorization": "acme-key-123"}, {"X-API-Key": ""},
     {"Authorization": "Basic YWNtZTphY21lLWtleS0xMjM="}],
    ids=["none", "wrong", "no-scheme", "empty", "basic"],
)  # fmt: skip
async def test_every_route_but_healthz_needs_a_valid_key(
    http: httpx.AsyncClient, method: str, path: str, body: dict | None, headers: dict
) -> None:
    response = await http.request(method, path, json=body, headers=headers)
    assert response.status_code == 401
    assert "API key" in response.json()["detail"]
    assert "acme-key-123" not in response.text


async def test_healthz_is_open(http: httpx.AsyncClient) -> None:
    assert (await http.get("/healthz")).status_code == 200


async def test_both_header_forms_work(http: httpx.AsyncClient) -> None:
    assert (await http.get("/flows", headers=ACME)).status_code == 200
    assert (await http.get("/flows", headers={"X-API-Key": "acme-key-123"})).status_code == 200


async def test_another_tenants_things_answer_404_like_missing_ones(
    http: httpx.AsyncClient, auth_settings: Settings
) -> None:
    job_id = (await http.post("/run", json=RUN, headers=ACME)).json()["job_id"]
    await http.put("/docs/prd", json={"content": "acme prd"}, headers=ACME)
    await drain(auth_settings)
    assert (await http.get(f"/run/{job_id}", headers=ACME)).json()["status"] == "complete"
    missing = "f" * 32
    for path in (f"/run/{job_id}", f"/run/{job_id}/events", "/docs/prd", "/memory/story-1"):
        theirs = await http.get(path, headers=EVIL)
        nobody = await http.get(path.replace(job_id, missing).replace("prd", "nope").replace("story-1", "nope"),
                                headers=EVIL)  # fmt: skip
        assert theirs.status_code == nobody.status_code == 404
        assert theirs.json() == {"detail": theirs.json()["detail"]} == {"detail": nobody.json()["detail"]}
    assert (await http.delete(f"/run/{job_id}", headers=EVIL)).status_code == 404
    for action, body in (("retry", None), ("input", {"action": "approve"})):
        theirs = await http.post(f"/run/{job_id}/{action}", json=body, headers=EVIL)
        nobody = await http.post(f"/run/{missing}/{action}", json=body, headers=EVIL)
        assert theirs.status_code == nobody.status_code == 404 and theirs.json() == nobody.json()
    assert (await http.delete("/docs/prd", headers=EVIL)).status_code == 404
    assert (await http.delete("/memory/story-1", headers=EVIL)).status_code == 404
    assert (await http.get("/runs", headers=EVIL)).json() == []
    assert (await http.get("/docs", headers=EVIL)).json() == []
    assert (await http.get("/docs/prd", headers=ACME)).json()["content"] == "acme prd"
    assert (await http.get("/memory/story-1", headers=ACME)).status_code == 200


async def test_documents_of_one_tenant_do_not_satisfy_anothers_flow(http: httpx.AsyncClient) -> None:
    for doc_id in ("prd", "architecture"):
        await http.put(f"/docs/{doc_id}", json={"content": "x"}, headers=ACME)
    story = {**RUN, "flow": "story"}
    assert (await http.post("/run", json=story, headers=ACME)).status_code == 202
    assert (await http.post("/run", json=story, headers=EVIL)).json()["status"] == "pending_docs"


async def test_idempotency_keys_are_per_tenant(http: httpx.AsyncClient) -> None:
    headers = {"Idempotency-Key": "same"}
    mine = (await http.post("/run", json=RUN, headers={**ACME, **headers})).json()["job_id"]
    theirs = (await http.post("/run", json=RUN, headers={**EVIL, **headers})).json()["job_id"]
    assert mine != theirs


async def test_tenant_keys_cannot_collide(redis: Redis, http: httpx.AsyncClient) -> None:
    """'acme-evil' is named like a prefix of 'acme': its keys must still be its own."""
    await http.put("/docs/prd", json={"content": "x"}, headers=EVIL)
    keys = {key.decode() for key in await redis.keys("sf:t:*")}
    assert keys and all(key.startswith("sf:t:acme-evil:") for key in keys)


async def test_ops_routes_can_be_made_public(redis_url: str, redis: Redis) -> None:
    async for client in api_client(make_settings(redis_url, api_keys=KEYS, public_ops=True)):
        assert (await client.get("/readyz")).status_code == 503  # no worker, but not 401
        assert (await client.get("/flows")).status_code == 401


def test_malformed_api_keys_fail_fast() -> None:
    for bad in ("no-colon", "a:short", ":key-12345", "bad tenant:key-12345"):
        with pytest.raises(ValueError):
            Settings(api_keys=bad)


async def test_active_runs_limit_answers_429(redis_url: str, redis: Redis) -> None:
    async for client in api_client(make_settings(redis_url, api_keys=KEYS, max_active_runs_per_tenant=2)):
        codes = [(await client.post("/run", json={**RUN, "story_id": f"s{i}"}, headers=ACME)).status_code
                 for i in range(3)]  # fmt: skip
        assert codes == [202, 202, 429]
        assert (await client.post("/run", json=RUN, headers=EVIL)).status_code == 202
        limited = await client.post("/run", json=RUN, headers=ACME)
        assert int(limited.headers["retry-after"]) > 0 and "tenant" in limited.json()["detail"]


async def test_active_runs_free_up_when_runs_finish(redis_url: str, redis: Redis) -> None:
    settings = make_settings(redis_url, max_active_runs_per_tenant=1)
    async for client in api_client(settings):
        assert (await client.post("/run", json=RUN)).status_code == 202
        assert (await client.post("/run", json=RUN)).status_code == 429
        await drain(settings)
        assert (await client.post("/run", json=RUN)).status_code == 202


async def test_submissions_per_minute_limit_answers_429(redis_url: str, redis: Redis) -> None:
    async for client in api_client(make_settings(redis_url, api_keys=KEYS, submissions_per_minute=3)):
        codes = [(await client.post("/run", json=RUN, headers=ACME)).status_code for _ in range(4)]
        assert codes == [202, 202, 202, 429]
        assert (await client.post("/run", json=RUN, headers=EVIL)).status_code == 202
