"""`rediss://` with a password: the API and a worker talk to a Redis that only speaks TLS."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.embedded_redis import free_port, path_redis_server
from tests.conftest import api_client, drain, make_settings, wait_for

pytestmark = pytest.mark.skipif(
    shutil.which("openssl") is None or path_redis_server() is None, reason="needs openssl and redis-server"
)


@pytest.fixture
def tls_redis_url(tmp_path: Path) -> Iterator[str]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    port = free_port()
    server = subprocess.Popen(
        [str(path_redis_server()), "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert),
         "--tls-auth-clients", "no", "--requirepass", "s3cret-pw", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    if server.poll() is not None:
        pytest.skip("this redis-server has no TLS support")
    yield f"rediss://:s3cret-pw@127.0.0.1:{port}/0?ssl_ca_certs={cert}"
    server.terminate()
    server.wait(timeout=10)


async def test_runs_over_rediss_with_a_password(tls_redis_url: str) -> None:
    import redis.asyncio

    probe = redis.asyncio.Redis.from_url(tls_redis_url)

    async def answering() -> bool:
        try:
            return bool(await probe.ping())
        except (redis.exceptions.ConnectionError, OSError):
            return False

    await wait_for(answering, timeout=10)
    await probe.aclose()
    settings = make_settings(tls_redis_url)
    async for client in api_client(settings):
        job_id = (await client.post("/run", json={"input": "over tls", "story_id": "s"})).json()["job_id"]
        await drain(settings)
        assert (await client.get(f"/run/{job_id}")).json()["result"] == "[summarizer] [analyst] over tls"
