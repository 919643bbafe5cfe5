"""Which pieces sit on powertrain's hot path, by measurement: `make bench-stack`.

Three side-by-side comparisons, each printed as CPU microseconds per call on
one core (lower is better), measured in one run:

- **HTTP client** to an OpenAI-compatible upstream: aiohttp vs httpx, 32 calls
  in flight over pooled keep-alive connections, against the benchmark's fast
  fake upstream (started here, on the other core).
- **JSON**: orjson vs the standard library, parsing a chat request and
  serialising a chat completion.
- **Framework on the route**: the same chat-completions-shaped handler called
  in-process as a pure ASGI app, as a Starlette route and as a FastAPI route
  with a pydantic body, so only the framework's own work is compared.

Run: ``.venv/bin/python -m bench.gateway.stack`` (needs ``pip install httpx``,
which ``make bench-stack`` does).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from bench.gateway.procs import REPO_ROOT, Server, free_port, usable_cpus
from bench.gateway.report import format_table

REQUEST = {
    "model": "bench",
    "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Say hello in one short sentence."},
    ],
    "max_tokens": 32,
    "temperature": 0,
}
BODY = orjson.dumps(REQUEST)
COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "bench",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello! How can I help you today?"},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21},
}


async def cpu_per_call(call: Callable[[], Awaitable[Any]], calls: int, concurrency: int) -> float:
    """CPU microseconds per call, with ``concurrency`` calls in flight."""
    remaining = calls

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await call()

    for _ in range(2):  # warm up once, then measure
        remaining = calls // 5
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    remaining = calls
    started = time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return (time.process_time() - started) / calls * 1e6


async def http_clients(upstream: str, calls: int) -> dict[str, float]:
    import aiohttp
    import httpx

    url = upstream + "/v1/chat/completions"
    headers = {"Authorization": "Bearer sk-bench", "Content-Type": "application/json"}
    results: dict[str, float] = {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:

        async def with_aiohttp() -> None:
            async with session.post(url, data=BODY, headers=headers) as response:
                orjson.loads(await response.read())

        results["aiohttp"] = await cpu_per_call(with_aiohttp, calls, 32)
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(limits=limits) as client:

        async def with_httpx() -> None:
            response = await client.post(url, content=BODY, headers=headers)
            orjson.loads(response.content)

        results["httpx"] = await cpu_per_call(with_httpx, calls, 32)
    return results


def json_libraries(calls: int) -> dict[str, float]:
    def per_call(fn: Callable[[], Any]) -> float:
        started = time.process_time()
        for _ in range(calls):
            fn()
        return (time.process_time() - started) / calls * 1e6

    return {
        "orjson": per_call(lambda: (orjson.loads(BODY), orjson.dumps(COMPLETION))),
        "json (stdlib)": per_call(lambda: (json.loads(BODY), json.dumps(COMPLETION).encode())),
    }


def _apps() -> dict[str, Any]:
    from fastapi import FastAPI
    from pydantic import BaseModel
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    answer = orjson.dumps(COMPLETION)

    async def pure(scope: Any, receive: Any, send: Any) -> None:
        message = await receive()
        orjson.loads(message["body"])
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})  # fmt: skip
        await send({"type": "http.response.body", "body": answer})

    async def starlette_route(request: Request) -> Response:
        orjson.loads(await request.body())
        return Response(answer, media_type="application/json")

    class Message(BaseModel):
        role: str
        content: str

    class ChatRequest(BaseModel):
        model: str
        messages: list[Message]
        max_tokens: int | None = None
        temperature: float | None = None

    fastapi_app = FastAPI()

    @fastapi_app.post("/v1/chat/completions")
    async def fastapi_route(body: ChatRequest) -> Response:
        return Response(answer, media_type="application/json")

    return {
        "pure ASGI": pure,
        "Starlette route": Starlette(
            routes=[Route("/v1/chat/completions", starlette_route, methods=["POST"])]
        ),
        "FastAPI route + pydantic body": fastapi_app,
    }


async def frameworks(calls: int) -> dict[str, float]:
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
        "query_string": b"", "root_path": "", "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2),
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(BODY)).encode())],
    }  # fmt: skip
    results = {}
    for name, app in _apps().items():

        async def call(app: Any = app) -> None:
            async def receive() -> dict[str, Any]:
                return {"type": "http.request", "body": BODY, "more_body": False}

            async def send(message: dict[str, Any]) -> None:
                return None

            await app(dict(scope), receive, send)

        results[name] = await cpu_per_call(call, calls, 1)
    return results


def _table(title: str, results: dict[str, float]) -> str:
    best = min(results.values())
    rows = [[name, f"{us:.1f}", f"{us / best:.2f}x"] for name, us in results.items()]
    return f"{title}\n" + format_table(["choice", "CPU us/call", "vs best"], rows)


def main() -> int:
    import uvloop

    gateway_cpu, other_cpu = usable_cpus()
    port = free_port()
    upstream = Server.start(
        "upstream",
        [sys.executable, "-m", "bench.gateway.upstream", "--port", str(port)],
        REPO_ROOT / "bench" / "results" / "stack-upstream.log",
        other_cpu,
    )
    try:
        upstream.wait_healthy(f"http://127.0.0.1:{port}/healthz", timeout=30)
        if gateway_cpu is not None:
            import os

            os.sched_setaffinity(0, {gateway_cpu})
        clients = uvloop.run(http_clients(f"http://127.0.0.1:{port}", 20_000))
    finally:
        upstream.stop()
    print(_table("HTTP client to the upstream (32 in flight)", clients))
    print()
    print(_table("JSON: parse a request + serialise a completion", json_libraries(100_000)))
    print()
    print(_table("Framework around the route (in-process ASGI)", uvloop.run(frameworks(20_000))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
