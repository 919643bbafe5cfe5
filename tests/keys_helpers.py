"""What the API-key tests share: a priced fake upstream model and a small HTTP client."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from powertrain.config import Config
from powertrain.server.app import PowertrainApp
from tests.conftest import config_from, openai_model_toml, serving

ADMIN = "pt-admin-" + uuid.uuid4().hex
# $1000 per 1M output tokens and nothing for input: a call that may write 10 tokens
# holds exactly $0.01, and one that writes 10 costs exactly that.
PAID_PRICES = "price_input = 0\nprice_output = 1000\n"


def keyed_config(
    tmp_path: Path, upstream_url: str, *, settings: str = "", extra: str = ""
) -> Config:
    """Authentication on; models "paid" (priced), "cheap" (free) and "emb" (embeddings)."""
    return config_from(
        tmp_path,
        f'[settings]\nadmin_key = "{ADMIN}"\n{settings}\n'
        + openai_model_toml("paid", upstream_url, extra=PAID_PRICES)
        + openai_model_toml("cheap", upstream_url)
        + openai_model_toml("emb", upstream_url)
        + extra,
    )


def chat(model: str = "paid", text: str = "hi", **params: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **params}


class Api:
    """JSON over HTTP with a bearer key (the admin key unless told otherwise)."""

    def __init__(self, http: aiohttp.ClientSession, url: str, app: PowertrainApp):
        self.http = http
        self.url = url
        self.app = app

    async def call(
        self, method: str, path: str, body: Any = None, *, key: str | None = ADMIN
    ) -> tuple[int, Any, dict[str, str]]:
        headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
        async with self.http.request(method, self.url + path, json=body, headers=headers) as r:
            raw = await r.read()
            if r.content_type == "text/event-stream":
                return r.status, raw.decode(), dict(r.headers)
            data = await r.json(content_type=None) if raw else None
            return r.status, data, dict(r.headers)

    async def new_key(self, name: str = "tenant", **limits: Any) -> tuple[str, str]:
        """(id, secret) of a new virtual key."""
        status, body, _ = await self.call("POST", "/api/keys", {"name": name, **limits})
        assert status == 201, body
        return body["id"], body["key"]

    async def key_info(self, key_id: str) -> dict[str, Any]:
        await self.app.gateway.access.drain()  # spend is recorded just after a call ends
        status, body, _ = await self.call("GET", f"/api/keys/{key_id}")
        assert status == 200, body
        return body  # type: ignore[no-any-return]


@asynccontextmanager
async def served(config: Config) -> AsyncIterator[Api]:
    async with serving(config) as (url, app), aiohttp.ClientSession() as http:
        yield Api(http, url, app)


def assert_error(body: Any, *, status_type: str, code: str | None = None) -> dict[str, Any]:
    """The OpenAI error shape, with its type (and code)."""
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["type"] == status_type, error
    if code is not None:
        assert error["code"] == code, error
    return error  # type: ignore[no-any-return]
