"""A fast fake OpenAI-compatible upstream: instant, precomputed answers.

A raw asyncio ``Protocol`` HTTP/1.1 server (on uvloop when available) with
keep-alive and pipelining. It must never be the bottleneck of the benchmark,
so every response is a precomputed byte string:

- ``POST …/chat/completions``: a ``chat.completion`` JSON with usage, or, when
  the body asks for ``"stream": true``, an SSE body (role chunk, content
  chunks, a finish chunk with usage, ``data: [DONE]``) sent chunked;
- ``GET …/models``: one model;
- ``GET /health`` and ``/healthz``: ``ok``.

Run: ``python -m bench.gateway.upstream --port 9000``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import socket
from typing import cast

MODEL = "bench-model"
CREATED = 1_700_000_000
ANSWER_PIECES = ("Hello", "!", " How", " can", " I", " help", " you", " today", "?")
PROMPT_TOKENS = 12

_STREAM_RE = re.compile(rb'"stream"\s*:\s*true')


def _completion_body() -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": CREATED,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(ANSWER_PIECES)},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": PROMPT_TOKENS,
                "completion_tokens": len(ANSWER_PIECES),
                "total_tokens": PROMPT_TOKENS + len(ANSWER_PIECES),
            },
        },
        separators=(",", ":"),
    ).encode()


def _chunk(delta: dict[str, str], finish: str | None, usage: dict[str, int] | None) -> bytes:
    chunk: dict[str, object] = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    if usage is not None:
        chunk["usage"] = usage
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


def _stream_body() -> bytes:
    usage = {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": len(ANSWER_PIECES),
        "total_tokens": PROMPT_TOKENS + len(ANSWER_PIECES),
    }
    parts = [_chunk({"role": "assistant", "content": ""}, None, None)]
    parts += [_chunk({"content": piece}, None, None) for piece in ANSWER_PIECES]
    parts.append(_chunk({}, "stop", usage))
    parts.append(b"data: [DONE]\n\n")
    return b"".join(parts)


def _models_body() -> bytes:
    return json.dumps(
        {
            "object": "list",
            "data": [{"id": MODEL, "object": "model", "created": CREATED, "owned_by": "bench"}],
        },
        separators=(",", ":"),
    ).encode()


def _fixed(status: str, content_type: str, body: bytes) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


def _chunked(content_type: str, body: bytes) -> bytes:
    head = (
        "HTTP/1.1 200 OK\r\n"
        f"Content-Type: {content_type}\r\n"
        "Cache-Control: no-cache\r\n"
        "Transfer-Encoding: chunked\r\n"
        "\r\n"
    ).encode()
    return head + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"


COMPLETION = _fixed("200 OK", "application/json", _completion_body())
STREAM = _chunked("text/event-stream; charset=utf-8", _stream_body())
MODELS = _fixed("200 OK", "application/json", _models_body())
HEALTH = _fixed("200 OK", "text/plain", b"ok")
NOT_FOUND = _fixed("404 Not Found", "application/json", b'{"error":{"message":"not found"}}')
BAD_REQUEST = _fixed("400 Bad Request", "text/plain", b"bad request")


def _header_value(lower_head: bytes, name: bytes) -> bytes | None:
    """Value of header ``name`` (lower case, with the colon) in a lower-cased head."""
    start = lower_head.find(b"\r\n" + name)
    if start < 0:
        return None
    start += 2 + len(name)
    end = lower_head.find(b"\r\n", start)
    return lower_head[start : end if end >= 0 else len(lower_head)].strip()


def _dechunk(buf: bytes, pos: int) -> tuple[bytes, int] | None:
    """Decode a chunked body starting at ``pos``: (body, end) or None if incomplete."""
    parts: list[bytes] = []
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(buf[pos:eol].split(b";", 1)[0], 16)
        pos = eol + 2
        if size == 0:
            end = buf.find(b"\r\n\r\n", pos - 2)
            return (b"".join(parts), end + 4) if end >= 0 else None
        if len(buf) < pos + size + 2:
            return None
        parts.append(buf[pos : pos + size])
        pos += size + 2


def _route(method: bytes, path: bytes, body: bytes) -> bytes:
    path = path.split(b"?", 1)[0]
    if method == b"POST" and path.endswith(b"/chat/completions"):
        return STREAM if _STREAM_RE.search(body) else COMPLETION
    if method == b"GET" and path.endswith(b"/models"):
        return MODELS
    if method == b"GET" and path in (b"/health", b"/healthz"):
        return HEALTH
    return NOT_FOUND


class UpstreamProtocol(asyncio.Protocol):
    """One HTTP/1.1 connection: parse requests off the buffer, answer each at once."""

    __slots__ = ("buffer", "transport")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        buf = self.buffer + data if self.buffer else data
        out: list[bytes] = []
        close = False
        while True:
            head_end = buf.find(b"\r\n\r\n")
            if head_end < 0:
                break
            head = buf[:head_end]
            lower = head.lower()
            line_end = head.find(b"\r\n")
            request_line = head[: line_end if line_end >= 0 else len(head)].split(b" ")
            if len(request_line) != 3:
                out.append(BAD_REQUEST)
                close = True
                buf = b""
                break
            body_start = head_end + 4
            length = _header_value(lower, b"content-length:")
            if length is not None:
                body_end = body_start + int(length)
                if len(buf) < body_end:
                    break
                body = buf[body_start:body_end]
            elif _header_value(lower, b"transfer-encoding:") == b"chunked":
                decoded = _dechunk(buf, body_start)
                if decoded is None:
                    break
                body, body_end = decoded
            else:
                body, body_end = b"", body_start
            buf = buf[body_end:]
            out.append(_route(request_line[0], request_line[1], body))
            connection = _header_value(lower, b"connection:")
            if connection == b"close" or (
                request_line[2] == b"HTTP/1.0" and connection != b"keep-alive"
            ):
                close = True
                buf = b""
                break
        self.buffer = buf
        assert self.transport is not None
        if out:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))
        if close:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


def install_fast_loop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = await loop.create_server(UpstreamProtocol, sock=sock, backlog=4096)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args(argv)
    install_fast_loop()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
