"""What `storyflow api` serves HTTP with: uvicorn's httptools protocol, with bounded request headers.

httptools keeps an unfinished header in memory however long it grows, and uvicorn waits for the
rest of a header for as long as a client takes to send it: 50 connections sending 8 MB of one
header each took the API from 83 MB to 483 MB, and a header sent a byte a second was never timed
out. This protocol counts the bytes a request's headers take and the time they take to arrive:
over STORYFLOW_MAX_HEADER_BYTES it answers 431, over STORYFLOW_HEADER_TIMEOUT 408, and closes.

Why not uvicorn's h11 with `h11_max_incomplete_event_size`: that bounds the size only, not the
time, and h11 parses in pure Python (slower per request than httptools); the few lines here keep
the fast parser and bound both.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def _answer(status: bytes, message: bytes) -> bytes:
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\nconnection: close\r\n"
        b"content-length: " + str(len(message)).encode() + b"\r\n\r\n" + message
    )


TOO_LARGE = _answer(b"431 Request Header Fields Too Large", b'{"detail":"request headers too large"}')
TOO_SLOW = _answer(b"408 Request Timeout", b'{"detail":"request headers took too long"}')


class BoundedHeadersProtocol(HttpToolsProtocol):
    max_header_bytes = 65536
    header_timeout = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_headers = False
        self._header_bytes = 0
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # Bytes fed while the headers are still incomplete were all header bytes.
        if self._in_headers and not self.transport.is_closing():
            self._header_bytes += len(data)
            if self._header_bytes > self.max_header_bytes:
                self._refuse(TOO_LARGE)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._header_timer is None:  # a request on a kept-alive connection: its first byte starts the clock
            self._await_headers()

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._stop_header_timer()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Idle between requests is uvicorn's keep-alive timeout's business; the next header's size is ours.
        self._in_headers, self._header_bytes = True, 0

    def _await_headers(self) -> None:
        self._in_headers, self._header_bytes = True, 0
        self._stop_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        if self._in_headers and not self.transport.is_closing():
            self._refuse(TOO_SLOW)

    def _refuse(self, answer: bytes) -> None:
        self._in_headers = False
        self._stop_header_timer()
        self.transport.write(answer)
        self.transport.close()


def bounded_headers_protocol(max_bytes: int, timeout: float) -> type[BoundedHeadersProtocol]:
    return type("BoundedHeaders", (BoundedHeadersProtocol,), {"max_header_bytes": max_bytes, "header_timeout": timeout})
