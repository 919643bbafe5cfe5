"""A small browser-like client for the UI tests: cookies, forms, the page's CSRF token."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from powertrain.config import Config
from powertrain.server.app import PowertrainApp
from tests.conftest import serving

_CSRF = re.compile(r'<meta name="csrf-token" content="([^"]*)">')


class Browser:
    """Requests as a browser sends them: Accept text/html, its cookies, same-origin forms."""

    def __init__(self, http: aiohttp.ClientSession, url: str, app: PowertrainApp):
        self.http = http
        self.url = url
        self.app = app
        self.csrf = ""

    async def get(self, path: str, **headers: str) -> tuple[int, str, dict[str, str]]:
        async with self.http.get(
            self.url + path,
            headers={"Accept": "text/html", **headers},
            allow_redirects=False,
        ) as resp:
            text = await resp.text()
            found = _CSRF.search(text)
            if found:
                self.csrf = found.group(1)
            return resp.status, text, dict(resp.headers)

    async def post(
        self,
        path: str,
        fields: dict[str, Any] | None = None,
        *,
        json: Any = None,
        token: str | None = None,
        origin: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, str, dict[str, str]]:
        """A form post (with ``csrf`` unless ``token`` says otherwise), or JSON as app.js
        sends it (the token in a header)."""
        sent = {"Accept": "text/html", "Origin": origin or self.url, **(headers or {})}
        token = self.csrf if token is None else token
        if json is not None:
            sent.update({"Accept": "application/json", "x-csrf-token": token})
            kwargs: dict[str, Any] = {"json": json}
        else:
            data = dict(fields or {})
            if token:
                data.setdefault("csrf", token)
            kwargs = {"data": data}
        async with self.http.post(
            self.url + path, headers=sent, allow_redirects=False, **kwargs
        ) as resp:
            return resp.status, await resp.text(), dict(resp.headers)

    async def sign_in(self, key: str) -> None:
        status, _, _ = await self.get("/ui/signin")
        assert status == 200
        status, body, headers = await self.post("/ui/signin", {"key": key, "next": "/ui/traces"})
        assert status == 303, body
        assert headers["Location"] == "/ui/traces"

    def cookie(self, name: str) -> str | None:
        for cookie in self.http.cookie_jar:
            if cookie.key == name:
                return cookie.value
        return None


@asynccontextmanager
async def browsing(config: Config) -> AsyncIterator[Browser]:
    async with serving(config) as (url, app):
        # unsafe=True: keep cookies from an IP address (127.0.0.1), as browsers do.
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(cookie_jar=jar) as http:
            yield Browser(http, url, app)


@asynccontextmanager
async def second_browser(first: Browser) -> AsyncIterator[Browser]:
    """Another person on the same server (its own cookies)."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        yield Browser(http, first.url, first.app)
