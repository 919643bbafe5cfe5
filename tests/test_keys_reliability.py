"""RELIABILITY 1, 8, 15 and 16 with virtual keys: auth fuzz on every route with storage
watched, default exposure, budgets under concurrency and rate limits across workers."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from sqlalchemy import event

from powertrain.errors import ConfigError
from powertrain.server import create_app
from powertrain.server.app import PowertrainApp
from powertrain.server.auth import Access
from tests.conftest import config_from, free_port, serving
from tests.fakes import FakeOpenAI
from tests.keys_helpers import ADMIN, Api, chat, keyed_config, served
from tests.test_auth import HOSTILE_VALUES

REDIS_ENV = "POWERTRAIN_TEST_REDIS_URL"


def _sample_path(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "1", path)


# ----------------------------------------------------------------------- 1. auth fuzz


def _hostile_keys(real: str, revoked: str) -> list[str]:
    """Values that look like virtual keys (so they do reach the store), and worse."""
    body = real[3:]
    return [
        revoked,
        real + "x",
        real[:-1],
        real.upper(),
        real[:-1] + ("A" if real[-1] != "A" else "B"),
        "pt-" + body[::-1],
        "pt-" + "A" * 43,
        "pt-" + "_" * 43,
        "pt-" + "-" * 128,
        "pt-" + "A" * 129,
        "pt-' OR '1'='1' --" + "A" * 30,
        "pt-" + "A" * 20 + "%00",
        "pt-" + "\uff21" * 43,  # fullwidth letters
        "pt-" + body + "\u200b",
        "PT-" + body,
        real + " " + real,
        ADMIN + real,
        "pt-;DROP TABLE api_keys;--" + "A" * 20,
    ] + [f"pt-{i:04d}" + "Z" * (16 + i % 60) for i in range(60)]


async def test_hostile_bearer_values_on_every_route_are_401_and_only_hashes_reach_storage(
    tmp_path: Path,
) -> None:
    """RELIABILITY 1: with virtual keys in the store, hundreds of hostile values on every
    route are refused with 401, and the store only ever sees a SHA-256 hex, bound."""
    async with FakeOpenAI() as upstream, served(keyed_config(tmp_path, upstream.url)) as api:
        _id, real = await api.new_key("real", budget_usd=1)
        revoked_id, revoked = await api.new_key("gone")
        status, _, _ = await api.call("DELETE", f"/api/keys/{revoked_id}")
        assert status == 204
        values = HOSTILE_VALUES + _hostile_keys(real, revoked)
        assert len(values) > 280

        seen: list[tuple[str, Any]] = []

        def watch(_conn: Any, _cursor: Any, statement: str, params: Any, *_: Any) -> None:
            seen.append((statement, params))

        engine = api.app.gateway.database.engine
        event.listen(engine, "before_cursor_execute", watch)
        protected = [
            (m, _sample_path(p)) for m, p, a in api.app.route_table() if a is not Access.PUBLIC
        ]
        assert len(protected) >= 25
        try:
            for method, path in protected:
                for value in values:
                    header = ("Bearer " + value).encode("utf-8").decode("latin-1")
                    async with api.http.request(
                        method,
                        api.url + path,
                        headers={"Authorization": header},
                        data=orjson.dumps(chat()),
                    ) as resp:
                        body = await resp.json(content_type=None)
                        assert resp.status in (401, 431), (method, path, value[:40], body)
                        if resp.status == 401:
                            assert body["error"]["type"] == "authentication_error"
        finally:
            event.remove(engine, "before_cursor_execute", watch)

        assert seen, "key-shaped values are looked up in the store"
        lookups = [(s, p) for s, p in seen if "api_keys" in s]
        assert lookups and all(s == lookups[0][0] for s, _p in lookups)  # one fixed statement
        for statement, params in seen:
            flat = str(params)
            for value in values:
                if len(value) >= 8:
                    assert value not in statement and value not in flat, value[:40]
        hashes = {v for _s, p in lookups for v in (p.values() if isinstance(p, dict) else p)}
        assert all(isinstance(h, str) and re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes)
        assert not upstream.requests

        # The real key still works, and the fuzz cost it nothing.
        status, body, _ = await api.call("POST", "/v1/chat/completions", chat("cheap"), key=real)
        assert status == 200, body


# ------------------------------------------------------------------ 8. default exposure


async def _asgi_get(app: PowertrainApp, path: str, client: tuple[str, int]) -> tuple[int, Any]:
    """One request straight into the ASGI app, from ``client``'s address."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    method = "POST" if path == "/v1/chat/completions" else "GET"
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"host", b"powertrain")],
        "client": client,
        "server": ("10.0.0.1", 8080),
    }
    await app(scope, receive, send)
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], orjson.loads(body)


async def test_without_authentication_only_this_machine_is_answered(tmp_path: Path) -> None:
    app = create_app(config_from(tmp_path))
    for path in ("/v1/models", "/api/traces", "/v1/chat/completions", "/api/keys"):
        status, body = await _asgi_get(app, path, ("203.0.113.9", 5000))
        assert status == 401, path
        assert "POWERTRAIN_ADMIN_KEY" in body["error"]["message"]
    status, _body = await _asgi_get(app, "/v1/models", ("127.0.0.1", 5000))
    assert status == 200
    status, _body = await _asgi_get(app, "/v1/models", ("::1", 5000))
    assert status == 200
    status, _body = await _asgi_get(app, "/healthz", ("203.0.113.9", 5000))
    assert status == 200


def test_running_without_authentication_can_be_forbidden(tmp_path: Path) -> None:
    config = config_from(tmp_path, "[settings]\nallow_unauthenticated = false\n")
    with pytest.raises(ConfigError, match="POWERTRAIN_ADMIN_KEY"):
        create_app(config)
    done = subprocess.run(
        [sys.executable, "-m", "powertrain.cli", "serve", "--port", str(free_port())],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "POWERTRAIN_ADMIN_KEY" in lines[0], done.stderr


# ------------------------------------------------------------ 15. budgets and concurrency


@asynccontextmanager
async def workers(config: Any, count: int) -> AsyncIterator[list[Api]]:
    """``count`` app instances, each with its own store connections, like gateway workers."""
    async with AsyncExitStack() as stack:
        http = await stack.enter_async_context(aiohttp.ClientSession())
        apis = []
        for _ in range(count):
            url, app = await stack.enter_async_context(serving(config))
            apis.append(Api(http, url, app))
        yield apis


@pytest.mark.parametrize("count", [1, 2], ids=["one-worker", "two-workers"])
async def test_fifty_concurrent_calls_against_a_budget_for_ten(
    tmp_path: Path, database_url: str, count: int
) -> None:
    """RELIABILITY 15: at most 10 of 50 concurrent calls succeed (here exactly 10: each
    holds what it will cost), on SQLite and Postgres, with one or two workers."""
    async with FakeOpenAI() as upstream:
        upstream.usage = (3, 10)  # 10 output tokens: exactly the $0.01 each call holds
        upstream.latency = 0.05  # keep the calls in flight together
        config = keyed_config(tmp_path, upstream.url, settings=f'database_url = "{database_url}"')
        async with workers(config, count) as apis:
            key_id, secret = await apis[0].new_key("race", budget_usd=0.10)

            async def one(i: int) -> tuple[int, Any]:
                status, body, _ = await apis[i % count].call(
                    "POST", "/v1/chat/completions", chat(max_tokens=10), key=secret
                )
                return status, body

            results = await asyncio.gather(*(one(i) for i in range(50)))
            ok = [r for r in results if r[0] == 200]
            refused = [r for r in results if r[0] != 200]
            assert len(ok) <= 10
            assert len(ok) == 10, [r[1] for r in refused[:3]]
            assert {r[0] for r in refused} == {429}
            assert {r[1]["error"]["code"] for r in refused} == {"budget_exceeded"}
            assert len(upstream.requests) == 10
            for api in apis:
                await api.app.gateway.access.drain()
            info = await apis[-1].key_info(key_id)
            assert info["spend_usd"] == pytest.approx(0.10)
            assert (info["reserved_usd"], info["remaining_usd"]) == (0, 0)
            status, body, _ = await apis[0].call(
                "POST", "/v1/chat/completions", chat(max_tokens=1), key=secret
            )
            assert status == 429 and body["error"]["code"] == "budget_exceeded"


# ------------------------------------------------------------- 16. rate limits, workers


async def test_requests_per_minute_are_shared_by_workers_through_redis(tmp_path: Path) -> None:
    """RELIABILITY 16 over HTTP: two workers, one Redis, one limit; 429 has Retry-After."""
    url = os.environ.get(REDIS_ENV)
    if not url:
        pytest.skip(f"{REDIS_ENV} is not set")
    async with FakeOpenAI() as upstream:
        upstream.usage = (1, 1)
        config = keyed_config(tmp_path, upstream.url, settings=f'redis_url = "{url}"')
        async with workers(config, 2) as (first, second):
            _id, secret = await first.new_key("shared", rpm=4, tpm=1000)
            statuses = []
            for api in (first, second, first, second, first, second):
                status, _body, headers = await api.call(
                    "POST", "/v1/chat/completions", chat("cheap", max_tokens=10), key=secret
                )
                statuses.append(status)
                if status == 429:
                    assert 1 <= int(headers["Retry-After"]) <= 15
            assert statuses == [200, 200, 200, 200, 429, 429]
            # Tokens too: what one worker's call used is gone for the other worker.
            upstream.usage = (1, 90)
            _id, tokens = await first.new_key("tokens", tpm=100)
            status, _body, _ = await first.call(
                "POST", "/v1/chat/completions", chat("cheap", max_tokens=95), key=tokens
            )
            assert status == 200
            await first.app.gateway.access.drain()  # corrected to the 91 tokens it used
            status, body, headers = await second.call(
                "POST", "/v1/chat/completions", chat("cheap", max_tokens=95), key=tokens
            )
            assert status == 429 and int(headers["Retry-After"]) >= 30, body
            assert "100 tokens per minute" in body["error"]["message"]
