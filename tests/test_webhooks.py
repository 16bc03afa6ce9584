"""Webhooks over real HTTP to a receiver on loopback: signed per Standard Webhooks (verified with the
`standardwebhooks` library), retried with the same id, refused for internal addresses."""

from __future__ import annotations

import base64
import ipaddress
import time
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from standardwebhooks.webhooks import Webhook

from infra import keys, safe_url
from infra.settings import Settings
from tests.conftest import RUN, api_client, make_settings, record, until_status, wait_for
from tests.support.receiver import Receiver

pytestmark = [pytest.mark.timeout(60)]

SECRET = "whsec_" + base64.b64encode(b"storyflow-test-webhook-secret-32b").decode()


def hook_settings(redis_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"webhook_secret": SECRET, "webhook_allow_private": True, "webhook_retry_base": 0.2}
    return make_settings(redis_url, **{**values, **overrides})


@pytest.fixture
def settings(redis_url: str, redis: Redis) -> Settings:
    return hook_settings(redis_url)


async def submit_with_hook(client: httpx.AsyncClient, url: str, **body: str) -> str:
    response = await client.post("/run", json={**RUN, "webhook": url, **body})
    assert response.status_code == 202, response.text
    job_id: str = response.json()["job_id"]
    return job_id


async def received(receiver: Receiver, count: int, timeout: float = 20) -> None:
    async def enough() -> bool:
        return len(receiver.received) >= count

    await wait_for(enough, timeout=timeout)


async def webhook_state(client: httpx.AsyncClient, job_id: str, **expected: Any) -> dict[str, Any]:
    async def matches() -> dict[str, Any] | None:
        state: dict[str, Any] | None = (await record(client, job_id))["webhook"]
        return state if state and all(state[k] == v for k, v in expected.items()) else None

    result: dict[str, Any] = await wait_for(matches)
    return result


async def test_a_finished_run_is_posted_signed_and_the_record_says_delivered(
    client: httpx.AsyncClient, background_worker: Any, receiver: Receiver
) -> None:
    job_id = await submit_with_hook(client, receiver.url)
    assert (await record(client, job_id))["webhook"] == {
        "url": receiver.url, "delivered": False, "attempts": 0, "last_status": None, "last_error": None,
    }  # fmt: skip
    await received(receiver, 1)
    got = receiver.received[0]
    event = Webhook(SECRET).verify(got.body, got.headers)  # raises unless the signature is right
    assert event["type"] == "run.complete"
    assert event["data"]["job_id"] == job_id and event["data"]["status"] == "complete"
    assert event["data"]["result"] == (await record(client, job_id))["result"]
    assert got.headers["webhook-id"].startswith("msg_") and got.headers["content-type"] == "application/json"
    assert abs(int(got.headers["webhook-timestamp"]) - time.time()) < 30
    state = await webhook_state(client, job_id, delivered=True)
    assert state == {"url": receiver.url, "delivered": True, "attempts": 1, "last_status": 200, "last_error": None}


async def test_a_signature_made_with_another_secret_does_not_verify(
    client: httpx.AsyncClient, background_worker: Any, receiver: Receiver
) -> None:
    await submit_with_hook(client, receiver.url)
    await received(receiver, 1)
    other = Webhook("whsec_" + base64.b64encode(b"another-secret-another-secret!!").decode())
    with pytest.raises(Exception, match="signature"):
        other.verify(receiver.received[0].body, receiver.received[0].headers)


async def test_500_twice_then_200_is_delivered_on_attempt_3_with_one_webhook_id(
    client: httpx.AsyncClient, background_worker: Any, receiver: Receiver
) -> None:
    receiver.statuses = [500, 500]
    job_id = await submit_with_hook(client, receiver.url)
    state = await webhook_state(client, job_id, delivered=True)
    assert state["attempts"] == 3 and state["last_status"] == 200
    assert len(receiver.received) == 3
    assert len({r.headers["webhook-id"] for r in receiver.received}) == 1
    for attempt in receiver.received:
        Webhook(SECRET).verify(attempt.body, attempt.headers)


async def test_a_receiver_that_never_accepts_is_given_up_after_max_attempts(
    redis_url: str, redis: Redis, background_worker_factory: Any, receiver: Receiver
) -> None:
    settings = hook_settings(redis_url, webhook_max_attempts=2)
    await background_worker_factory(settings)
    receiver.statuses = [503] * 10
    async for client in api_client(settings):
        job_id = await submit_with_hook(client, receiver.url)
        state = await webhook_state(client, job_id, attempts=2)
        assert state["delivered"] is False and state["last_status"] == 503
    assert await redis.zcard(keys.WEBHOOKS_DUE) == 0
    assert len(receiver.received) == 2


async def test_awaiting_input_and_then_complete_are_each_posted(
    client: httpx.AsyncClient, background_worker: Any, receiver: Receiver
) -> None:
    for doc_id in ("prd", "architecture"):
        await client.put(f"/docs/{doc_id}", json={"content": doc_id})
    job_id = await submit_with_hook(client, receiver.url, flow="story_approval")
    await received(receiver, 1)
    assert receiver.received[0].event["type"] == "run.awaiting_input"
    assert receiver.received[0].event["data"]["awaiting"]["node"] == "po"
    answered = await client.post(f"/run/{job_id}/input", json={"action": "approve"})
    assert answered.status_code == 202
    await received(receiver, 2)
    assert [r.event["type"] for r in receiver.received] == ["run.awaiting_input", "run.complete"]
    assert receiver.received[0].headers["webhook-id"] != receiver.received[1].headers["webhook-id"]


async def test_failed_and_cancelled_runs_are_posted(
    client: httpx.AsyncClient, background_worker: Any, receiver: Receiver
) -> None:
    await submit_with_hook(client, receiver.url, flow="explode")
    slow = await submit_with_hook(client, receiver.url, flow="slow", input="sleep=30", story_id="s2")
    await until_status(client, slow, "in_progress")
    assert (await client.delete(f"/run/{slow}")).status_code == 200
    await received(receiver, 2)
    kinds = sorted(r.event["type"] for r in receiver.received)
    assert kinds == ["run.cancelled", "run.failed"]
    failed = next(r.event for r in receiver.received if r.event["type"] == "run.failed")
    assert failed["data"]["error"]["type"]


async def test_a_receiver_that_hangs_does_not_hold_up_the_others(
    redis_url: str, redis: Redis, background_worker_factory: Any, receiver: Receiver
) -> None:
    settings = hook_settings(redis_url, webhook_timeout=30)
    await background_worker_factory(settings)
    receiver.hang_paths = {"/hang"}
    hanging = receiver.url.replace("/hook", "/hang")
    async for client in api_client(settings):
        await submit_with_hook(client, hanging, story_id="hang")
        await received(receiver, 1)  # the hanging request is under way
        started = time.monotonic()
        job_ids = [await submit_with_hook(client, receiver.url, story_id=f"ok-{i}") for i in range(5)]
        for job_id in job_ids:
            await webhook_state(client, job_id, delivered=True)
        assert time.monotonic() - started < 10  # long before the hanging attempt's 30 s timeout
    receiver.release.set()


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook", "http://10.0.0.1/hook", "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook", "http://0.0.0.0/hook", "http://localhost/hook", "http://192.168.1.10/",
        "http://224.0.0.1/", "http://[::ffff:127.0.0.1]/", "ftp://example.com/hook", "file:///etc/passwd",
        "https://user:pass@example.com/", "not a url", "http://no-such-host.invalid/",
    ],
)  # fmt: skip
async def test_internal_or_odd_urls_are_refused_at_submit(redis_url: str, redis: Redis, url: str) -> None:
    async for client in api_client(hook_settings(redis_url, webhook_allow_private=False)):
        response = await client.post("/run", json={**RUN, "webhook": url})
        assert response.status_code == 422, response.text
        assert response.json()["detail"][0]["loc"] == ["body", "webhook"]
        batch = await client.post("/batches", json={"runs": [RUN], "webhook": url})
        assert batch.status_code == 422, batch.text


async def test_without_a_secret_a_webhook_is_refused(redis_url: str, redis: Redis) -> None:
    async for client in api_client(make_settings(redis_url)):
        response = await client.post("/run", json={**RUN, "webhook": "https://example.com/hook"})
        assert response.status_code == 422
        assert "STORYFLOW_WEBHOOK_SECRET" in response.json()["detail"][0]["msg"]


async def test_the_address_is_checked_again_at_delivery(
    redis_url: str, redis: Redis, background_worker_factory: Any, receiver: Receiver
) -> None:
    # The API allowed it (as if the name had resolved to a public address then); the worker refuses it.
    await background_worker_factory(hook_settings(redis_url, webhook_allow_private=False, webhook_max_attempts=1))
    async for client in api_client(hook_settings(redis_url)):
        job_id = await submit_with_hook(client, receiver.url)
        state = await webhook_state(client, job_id, attempts=1)
    assert state["delivered"] is False and "loopback" in state["last_error"]
    assert receiver.received == []


async def test_a_redirect_is_not_followed(
    client: httpx.AsyncClient, background_worker: Any, receiver: Receiver, redis: Redis
) -> None:
    receiver.statuses = [302] * 10
    job_id = await submit_with_hook(client, receiver.url)
    state = await webhook_state(client, job_id, last_status=302)
    assert state["delivered"] is False
    assert {r.path for r in receiver.received} == {"/hook"}  # never the Location it was sent to


async def test_a_name_is_resolved_once_and_the_request_names_its_host(
    client: httpx.AsyncClient, background_worker: Any, receiver: Receiver
) -> None:
    by_name = receiver.url.replace("127.0.0.1", "localhost")  # may resolve to ::1 first: the next address is tried
    job_id = await submit_with_hook(client, by_name)
    state = await webhook_state(client, job_id, delivered=True)
    assert state["url"] == by_name
    assert receiver.received[0].headers["host"] == by_name.split("/")[2]


@pytest.mark.parametrize(
    ("address", "public"),
    [("93.184.216.34", True), ("2606:2800:220:1:248:1893:25c8:1946", True), ("100.64.0.1", False),
     ("::ffff:10.0.0.1", False), ("fd00::1", False), ("fe80::1", False), ("ff02::1", False), ("240.0.0.1", False)],
)  # fmt: skip
def test_which_addresses_are_public(address: str, public: bool) -> None:
    assert safe_url.is_public(ipaddress.ip_address(address)) is public


@pytest.mark.parametrize(
    "secret", ["not-whsec", "whsec_", "whsec_!!!notbase64", "whsec_" + base64.b64encode(b"short").decode()]
)
def test_a_malformed_webhook_secret_stops_the_process_at_start(secret: str) -> None:
    with pytest.raises(ValueError, match="whsec_"):
        Settings(webhook_secret=secret)


async def test_an_over_long_webhook_url_is_a_422(client: httpx.AsyncClient) -> None:
    response = await client.post("/run", json={**RUN, "webhook": "https://example.com/" + "a" * 2100})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "webhook"]
    assert (await client.get("/runs")).json() == []
