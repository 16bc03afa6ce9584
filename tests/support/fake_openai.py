"""A small OpenAI-compatible chat-completions server on loopback, for tests over real HTTP.

It runs uvicorn in a background thread on a free 127.0.0.1 port. Tests plan its answers
(`fake.plan(Reply.status(429, retry_after="0"), Reply.ok())`, or `fake.always(Reply.status(500))`
for every answer) and read what it received (`fake.requests`). Without a plan it answers a
chat completion whose content is "[<model>] <last user message>", with token usage (a token per
word). A request with `"stream": true` is answered as the API documents it: Server-Sent Events of
`chat.completion.chunk` objects, the content word by word, then (with `stream_options.include_usage`)
a chunk with no choices and the usage, then `data: [DONE]`.

Use it through the `fake_openai` fixture; a test module imports both fixtures:
`from tests.support.fake_openai import fake_openai_fixture, fake_openai_server`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

MAX_HANG_S = 30.0


def count_tokens(text: str) -> int:
    return len(text.split())


@dataclass(frozen=True)
class Reply:
    """One planned answer: wait `delay` seconds (a hang, if longer than the client's timeout), then answer."""

    code: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None  # None: a chat completion for 2xx, an OpenAI-style error object otherwise
    raw: bytes | None = None  # sent as is instead of `body` (malformed answers)
    delay: float = 0.0
    chunk_delay: float = 0.0  # between streamed pieces

    @classmethod
    def ok(cls, content: str | None = None, **kwargs: Any) -> Reply:
        body = None if content is None else {"content": content}
        return cls(200, body=body, **kwargs)

    @classmethod
    def status(cls, code: int, *, retry_after: str | None = None, **kwargs: Any) -> Reply:
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        return cls(code, headers=headers, **kwargs)

    @classmethod
    def hang(cls, seconds: float) -> Reply:
        return cls(200, delay=seconds)


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    json: Any
    at: float  # time.monotonic() on arrival
    peer: str  # the client's host:port (one per connection)


class FakeOpenAI:
    def __init__(self) -> None:
        self._planned: deque[Reply] = deque()
        self._fallback = Reply.ok()
        self._lock = threading.Lock()
        self.requests: list[Received] = []
        self._released: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))
        self.port: int = self._socket.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        app = Starlette(routes=[Route("/v1/chat/completions", self._chat_completions, methods=["POST"])])
        config = uvicorn.Config(
            app, lifespan="off", log_level="warning", access_log=False, loop="asyncio", http="h11",
            timeout_graceful_shutdown=1,
        )  # fmt: skip
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, name="fake-openai", daemon=True)

    # -- test side -------------------------------------------------------------------------------

    def plan(self, *replies: Reply) -> None:
        """Answer the next requests with these replies, in order; then with the fallback."""
        with self._lock:
            self._planned.extend(replies)

    def always(self, reply: Reply) -> None:
        """Answer every request (after any planned ones) with this reply."""
        with self._lock:
            self._fallback = reply

    def reset(self) -> None:
        """Forget the plan and the requests, and end the hangs in progress."""
        with self._lock:
            self._planned.clear()
            self._fallback = Reply.ok()
            self.requests.clear()
        self._release_hangs()

    @property
    def pending(self) -> int:
        """Planned replies not used yet."""
        return len(self._planned)

    def start(self) -> FakeOpenAI:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the fake OpenAI server did not start")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        self._release_hangs()
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()

    def _release_hangs(self) -> None:
        if self._loop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._new_release)

    # -- server side -----------------------------------------------------------------------------

    def _new_release(self) -> None:
        """End the hangs waiting now; later ones wait on a fresh event."""
        if self._released is not None:
            self._released.set()
        self._released = asyncio.Event()

    def _serve(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._released = asyncio.Event()
        await self._server.serve(sockets=[self._socket])

    async def _chat_completions(self, request: Request) -> Response:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        peer = f"{request.client.host}:{request.client.port}" if request.client else "?"
        received = Received(request.method, request.url.path, dict(request.headers), body, time.monotonic(), peer)
        with self._lock:
            self.requests.append(received)
            reply = self._planned.popleft() if self._planned else self._fallback
        if reply.delay:
            released = self._released
            assert released is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(released.wait(), min(reply.delay, MAX_HANG_S))
        if reply.raw is not None:
            return Response(reply.raw, status_code=reply.code, headers=reply.headers, media_type="application/json")
        if reply.code >= 400:
            error = reply.body or {"error": {"message": f"planned {reply.code}", "type": "fake", "code": reply.code}}
            return JSONResponse(error, status_code=reply.code, headers=reply.headers)
        completion = self._completion(body, reply)
        if isinstance(body, dict) and body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            chunks = _stream_chunks(completion, include_usage, reply.chunk_delay)
            return StreamingResponse(
                chunks, status_code=reply.code, headers=reply.headers, media_type="text/event-stream"
            )
        return JSONResponse(completion, status_code=reply.code, headers=reply.headers)

    def _completion(self, body: Any, reply: Reply) -> dict[str, Any]:
        model = body.get("model", "?") if isinstance(body, dict) else "?"
        messages = body.get("messages", []) if isinstance(body, dict) else []
        if isinstance(reply.body, dict) and "content" not in reply.body:
            return reply.body  # a whole planned body
        if isinstance(reply.body, dict):
            content = reply.body["content"]
        else:
            users = [m.get("content", "") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
            content = f"[{model}] {users[-1] if users else ''}"
        prompt_tokens = sum(count_tokens(str(m.get("content", ""))) for m in messages if isinstance(m, dict))
        completion_tokens = count_tokens(content)
        return {
            "id": f"chatcmpl-{len(self.requests)}", "object": "chat.completion", "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {
                "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }  # fmt: skip


async def _stream_chunks(completion: dict[str, Any], include_usage: bool, delay: float) -> AsyncIterator[bytes]:
    """The completion as the documented stream: a role chunk, content word by word, the finish, usage, [DONE]."""
    content = completion["choices"][0]["message"]["content"]
    base = {key: completion[key] for key in ("id", "created", "model")} | {"object": "chat.completion.chunk"}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return b"data: " + json.dumps({**base, "choices": [choice]}).encode() + b"\n\n"

    yield chunk({"role": "assistant", "content": ""})
    for word in re.findall(r"\S*\s*", content)[:-1]:
        if delay:
            await asyncio.sleep(delay)
        yield chunk({"content": word})
    yield chunk({}, "stop")
    if include_usage:
        yield b"data: " + json.dumps({**base, "choices": [], "usage": completion["usage"]}).encode() + b"\n\n"
    yield b"data: [DONE]\n\n"


@pytest.fixture(scope="session")
def fake_openai_server() -> Iterator[FakeOpenAI]:
    """One fake server for the session (starting and stopping uvicorn takes a while)."""
    server = FakeOpenAI().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(name="fake_openai")
def fake_openai_fixture(fake_openai_server: FakeOpenAI) -> Iterator[FakeOpenAI]:
    """The fake server, with no plan and no requests at the start of the test; hangs released at its end."""
    fake_openai_server.reset()
    yield fake_openai_server
    fake_openai_server.reset()
