"""Request headers on what `storyflow api` serves: bounded in size and in time (raw sockets, a real process)."""

from __future__ import annotations

import asyncio
import http.client
import socket
import time
from collections.abc import AsyncIterator

import pytest

from infra.embedded_redis import free_port
from tests.conftest import Processes, wait_http_ok

pytestmark = [pytest.mark.timeout(60)]
MAX_HEADER_BYTES = 8192
HEADER_TIMEOUT_S = 1.0


@pytest.fixture
async def api(processes: Processes) -> AsyncIterator[tuple[int, int]]:
    port = free_port()
    process = processes.api(
        port, STORYFLOW_MAX_HEADER_BYTES=str(MAX_HEADER_BYTES), STORYFLOW_HEADER_TIMEOUT=str(HEADER_TIMEOUT_S)
    )
    await wait_http_ok(f"http://127.0.0.1:{port}/healthz")
    yield port, process.pid


def rss_kb(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):  # noqa: SIM115
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def read_all(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except (TimeoutError, ConnectionResetError):
        pass
    return b"".join(chunks)


def send_endless_header(port: int, megabytes: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
        try:
            for _ in range(megabytes * 16):
                sock.sendall(b"a" * 65536)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed the connection: what we want
        return read_all(sock, 5)


async def test_an_endless_header_is_refused_and_memory_stays_flat(api: tuple[int, int]) -> None:
    port, pid = api
    before = rss_kb(pid)
    answers = await asyncio.gather(*(asyncio.to_thread(send_endless_header, port, 8) for _ in range(20)))
    for answer in answers:
        assert answer == b"" or answer.startswith(b"HTTP/1.1 431"), answer[:80]
    assert any(answer.startswith(b"HTTP/1.1 431") for answer in answers)
    assert rss_kb(pid) - before < 50_000  # 20 x 8 MB would be 160 MB
    await wait_http_ok(f"http://127.0.0.1:{port}/healthz")  # and it still serves


def send_slowly(port: int) -> tuple[bytes, float]:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        try:
            for _ in range(20):
                sock.sendall(b"X")
                time.sleep(0.25)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = read_all(sock, 3)
        return answer, time.monotonic() - started


async def test_a_header_sent_a_byte_at_a_time_is_timed_out(api: tuple[int, int]) -> None:
    port, _ = api
    answer, took = await asyncio.to_thread(send_slowly, port)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
    assert took < HEADER_TIMEOUT_S + 4


def silent_connection(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        return read_all(sock, HEADER_TIMEOUT_S + 3)


async def test_a_connection_that_sends_nothing_is_closed(api: tuple[int, int]) -> None:
    port, _ = api
    assert (await asyncio.to_thread(silent_connection, port)).startswith(b"HTTP/1.1 408")


def keep_alive_requests(port: int) -> list[tuple[int, bytes]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    answers = []
    for _ in range(3):
        connection.request("GET", "/healthz", headers={"X-Pad": "p" * 4000})
        response = connection.getresponse()
        answers.append((response.status, response.read()))
        time.sleep(HEADER_TIMEOUT_S / 2)  # idle between requests: not the header clock's business
    connection.close()
    return answers


async def test_ordinary_requests_on_a_kept_alive_connection_are_served(api: tuple[int, int]) -> None:
    port, _ = api
    answers = await asyncio.to_thread(keep_alive_requests, port)
    assert [status for status, _ in answers] == [200, 200, 200], answers
