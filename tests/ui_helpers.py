"""A small browser-like client for the UI tests: cookies, forms, the page's CSRF token; and a
sentiment task with job records for the fine-tuning pages."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from powertrain.config import Config
from powertrain.server.app import PowertrainApp
from powertrain.store.finetune import FineTuneStore, JobRecord
from powertrain.store.splits import SplitStore
from tests.conftest import serving
from tests.fakes import FakeOpenAI
from tests.keys_helpers import ADMIN, keyed_config

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


# -- fine-tuning: a small sentiment task and a labelled set a classifier learns in seconds ----
SENTIMENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"sentiment": {"type": "string", "enum": ["positive", "negative"]}},
    "required": ["sentiment"],
}
_SUBJECTS = ("The phone", "This blender", "The headphones", "My new laptop", "The delivery")
_SUBJECTS += ("This jacket",)
_SAID = {
    "positive": (
        "is wonderful, I love it",
        "works perfectly every day",
        "exceeded all my expectations",
        "is great value for the money",
        "made me very happy",
    ),
    "negative": (
        "broke after a single day",
        "is a total waste of money",
        "stopped working within a week",
        "arrived damaged and useless",
        "made me really angry",
    ),
}


def sentiment_rows() -> list[dict[str, Any]]:
    """60 short reviews, half of each label, as dataset rows (``vars`` and ``expected``)."""
    return [
        {"vars": {"review": f"{subject} {phrase}."}, "expected": {"sentiment": label}}
        for label, phrases in _SAID.items()
        for subject in _SUBJECTS
        for phrase in phrases
    ]


SENTIMENT_TASK = """
[tasks.sentiment]
system = "Classify the sentiment of the review."
user = "Review: {{ review }}"
variables = { review = "string" }
model = "cheap"
[tasks.sentiment.output]
schema_file = "sentiment.schema.json"
[tasks.sentiment.variants.base]
weight = 1
"""


@asynccontextmanager
async def sentiment_ui(tmp_path: Path, *, reply: str | None = None) -> AsyncIterator[Browser]:
    """The admin signed in on a server with task ``sentiment`` (variant ``base`` on the fake
    upstream model ``cheap``)."""
    (tmp_path / "sentiment.schema.json").write_text(json.dumps(SENTIMENT_SCHEMA))
    async with FakeOpenAI(reply=reply) as upstream:
        async with browsing(keyed_config(tmp_path, upstream.url, extra=SENTIMENT_TASK)) as web:
            await web.sign_in(ADMIN)
            yield web


def job_record(
    web: Browser,
    *,
    status: str = "succeeded",
    method: str = "lora",
    dataset: str = "reviews",
    dataset_version: int = 1,
    variant: str | None = None,
    add_variant: bool = False,
    settings: dict[str, Any] | None = None,
    **values: Any,
) -> JobRecord:
    """A job of task ``sentiment`` as a worker leaves it (``values``: any column); with
    ``add_variant``, its variant is added to the task as a finished job adds it."""
    store = FineTuneStore(web.app.gateway.database)
    job = store.create_job(
        task="sentiment",
        owner="",
        dataset=dataset,
        dataset_version=dataset_version,
        method=method,
        base_model="cheap",
        params={
            "variant": "base",
            "encoder": "minilm",
            "seed": 0,
            "settings": {"epochs": 2} if settings is None else settings,
            "limit": None,
        },
    )
    store.update_job(job.id, status=status, variant=variant, **values)
    if add_variant and variant is not None:
        spec = {"model": values.get("model_alias") or "cheap", "version": 1, "params": {}}
        SplitStore(web.app.gateway.database).add_variant("sentiment", variant, spec, source=job.id)
        web.app.gateway.tasks.registry.invalidate("sentiment")
    found = store.get_job(job.id)
    assert found is not None
    return found
