"""Small pure-ASGI helpers for the hot path: bodies with a limit, JSON, SSE, disconnects."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from powertrain.errors import InvalidRequest, PowertrainError, RequestTooLarge

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

JSON_HEADERS = [(b"content-type", b"application/json")]
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class Disconnected(Exception):
    """The client closed the connection while we were reading its body."""


def header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value  # type: ignore[no-any-return]
    return None


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole request body, refusing (413) anything over ``limit`` bytes early."""
    declared = header(scope, b"content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise InvalidRequest("content-length header is not a number") from None
        if size > limit:
            raise RequestTooLarge(
                f"request body is {size} bytes, over the limit of {limit} bytes "
                "(setting max_body_bytes)"
            )
    chunks: list[bytes] = []
    total = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Disconnected
        chunk = message.get("body", b"")
        total += len(chunk)
        if total > limit:
            raise RequestTooLarge(
                f"request body is over the limit of {limit} bytes (setting max_body_bytes)"
            )
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from None


async def send_json(
    send: Send, status: int, payload: Any, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = orjson.dumps(payload)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                *JSON_HEADERS,
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def send_error(
    send: Send, error: PowertrainError, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    extra = [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await send_json(send, error.status_code, error.to_openai(), [*extra, *(headers or [])])


def sse_event(payload: Any) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


class DisconnectWatcher:
    """Cancels the handling task when the client goes away (after its body was read).

    ASGI reports a vanished client only through ``receive()``, so noticing one
    takes a task awaiting it — and a task per request is most of a fast call's
    overhead. The watch therefore starts after ``grace`` seconds: a call that is
    done by then never pays for it, and one that waits on a model is watched
    from then on (a client that leaves is noticed at most ``grace`` late).
    """

    def __init__(self, receive: Receive, grace: float = 0.05):
        self._receive = receive
        self._task = asyncio.current_task()
        self.disconnected = False
        self._watcher: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            grace, self._start
        )

    def _start(self) -> None:
        self._timer = None
        self._watcher = asyncio.ensure_future(self._watch())

    async def _watch(self) -> None:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
                if self._task is not None:
                    self._task.cancel()
                return

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._watcher is not None:
            self._watcher.cancel()
