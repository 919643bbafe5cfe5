"""The floor: a bare pass-through proxy on the same HTTP stack as powertrain.

A pure ASGI app (no framework) meant for uvicorn with uvloop and httptools. It
reads the request body, POSTs it to the upstream with one pooled
``aiohttp.ClientSession`` and returns the upstream's status, content type and
body, streaming it through when the upstream answers with server-sent events.
No parsing, auth, routing or tracing: whatever a real gateway costs above this
is the price of its features.

Run: ``BENCH_UPSTREAM=http://127.0.0.1:9000 uvicorn bench.gateway.bare_proxy:app
--loop uvloop --http httptools --no-access-log --port 9001``.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import aiohttp

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

UPSTREAM_ENV = "BENCH_UPSTREAM"
UPSTREAM_KEY_ENV = "BENCH_UPSTREAM_KEY"


class BareProxy:
    """Forward every HTTP request's body to ``upstream + path`` and relay the answer."""

    def __init__(self, upstream: str, api_key: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.headers = {"Content-Type": "application/json", "Authorization": f"Bearer {api_key}"}
        self.session: aiohttp.ClientSession | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=None)
                self.session = aiohttp.ClientSession(connector=connector)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.session is not None:
                    await self.session.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] in ("/health", "/healthz"):
            await _respond(send, 200, b"text/plain", b"ok")
            return
        body = await _read_body(receive)
        assert self.session is not None, "lifespan startup did not run"
        url = self.upstream + scope["path"]
        async with self.session.request(
            scope["method"], url, data=body or None, headers=self.headers
        ) as upstream:
            content_type = upstream.headers.get("Content-Type", "application/json").encode()
            if content_type.startswith(b"text/event-stream"):
                await send(
                    {
                        "type": "http.response.start",
                        "status": upstream.status,
                        "headers": [(b"content-type", content_type)],
                    }
                )
                async for piece in upstream.content.iter_any():
                    await send({"type": "http.response.body", "body": piece, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
            else:
                await _respond(send, upstream.status, content_type, await upstream.read())


async def _read_body(receive: Receive) -> bytes:
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    parts = [body]
    while message.get("more_body", False):
        message = await receive()
        parts.append(message.get("body", b""))
    return b"".join(parts)


async def _respond(send: Send, status: int, content_type: bytes, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


app = BareProxy(
    os.environ.get(UPSTREAM_ENV, "http://127.0.0.1:9000"),
    os.environ.get(UPSTREAM_KEY_ENV, "sk-bench"),
)
