"""Bodies a careless or hostile client sends: each gets a clear 4xx, never a 500 or a traceback in the log."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.conftest import make_settings

NON_FINITE = [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400"]
JSON = {"content-type": "application/json"}


@pytest.mark.parametrize("number", NON_FINITE, ids=lambda n: n.decode())
@pytest.mark.parametrize(
    ("method", "path", "template"),
    [
        ("POST", "/run", b'{"story_id": "s1", "input": %s}'),
        ("POST", "/run", b'{"story_id": "s1", "input": "hi", "extra": [%s]}'),
        ("POST", "/runs/batch", b'{"runs": [{"story_id": "s1", "input": %s}]}'),
        ("PUT", "/docs/prd", b'{"content": %s}'),
    ],
    ids=["run-input", "run-extra-field", "batch-item", "doc-content"],
)
async def test_non_finite_numbers_are_422_not_500(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture, method: str, path: str, template: bytes, number: bytes
) -> None:
    caplog.set_level(logging.INFO)
    response = await client.request(method, path, content=template % number, headers=JSON)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["type"] == "json_invalid"
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert (await client.get("/runs")).json() == []  # nothing was queued


async def _chunks(total: int, size: int = 16_384) -> AsyncIterator[bytes]:
    yield b'{"story_id": "s1", "input": "'
    for _ in range(total // size):
        yield b"x" * size
    yield b'"}'


@pytest.mark.parametrize("path", ["/run", "/runs/batch", "/docs/prd"])
async def test_a_chunked_body_over_the_limit_is_413_like_one_with_a_length(
    client: httpx.AsyncClient, path: str
) -> None:
    method = "PUT" if path.startswith("/docs") else "POST"
    limit = make_settings("redis://unused").max_body_bytes
    response = await client.request(method, path, content=_chunks(limit + 65_536), headers=JSON)
    assert "content-length" not in response.request.headers  # it really went chunked
    assert response.status_code == 413, response.text
    assert response.json() == {"detail": "Content Too Large"}


async def test_a_chunked_body_under_the_limit_is_accepted(client: httpx.AsyncClient) -> None:
    response = await client.post("/run", content=_chunks(32_768), headers=JSON)
    assert response.status_code == 202, response.text


def test_one_key_for_two_tenants_stops_the_start() -> None:
    with pytest.raises(ValueError, match="one key to tenants 'acme' and 'dup'"):
        make_settings("redis://localhost", api_keys="acme:k1234567,dup:k1234567")
