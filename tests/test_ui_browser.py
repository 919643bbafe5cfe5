"""The web UI in headless Chromium, against a real ``powertrain serve``.

Debian's ``chromium`` is driven by ``playwright-core`` (``tests/ui/flows.mjs``; never a
browser download): sign in, a playground call (two models side by side) and a task
run, find the call's trace, label three traces from the annotation queue and find
them in a dataset built from feedback, open an eval run's matrix and drill into a
cell's trace, and check that a trace whose output holds ``<script>`` and a markdown
image renders as inert text (no script ran, nothing was fetched). Every page visited
is saved as a PNG under ``test-artifacts/ui/``.

Needs ``/usr/bin/chromium`` and ``tests/ui/node_modules`` (``make ui-test-deps``):
skipped without them, unless ``POWERTRAIN_TEST_UI=1`` (CI), where that is a failure.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import REPO, ServerProcess, openai_model_toml, start_server
from tests.fakes import FakeOpenAI
from tests.fakes.upstreams import RecordedRequest

UI_DIR = REPO / "tests" / "ui"
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "test-artifacts" / "ui"
ADMIN = "pt-admin-browser-" + "k" * 20
QUESTION = "What is the capital of France? (browser test)"
TASK = "sentiment"
SCHEMA = {
    "type": "object",
    "properties": {"sentiment": {"type": "string", "enum": ["positive", "negative"]}},
    "required": ["sentiment"],
}


def _missing() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed"
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (make ui-test-deps installs Debian's chromium)"
    if not (UI_DIR / "node_modules" / "playwright-core").is_dir():
        return "tests/ui/node_modules is missing (make ui-test-deps runs npm ci)"
    return None


@pytest.fixture
def ui_tools() -> None:
    reason = _missing()
    if reason is not None:
        if os.environ.get("POWERTRAIN_TEST_UI") == "1":
            pytest.fail(f"POWERTRAIN_TEST_UI=1 but {reason}")
        pytest.skip(reason)


class Beacon:
    """A server that counts every request: a rendered markdown image would call it."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> Beacon:
        async def any_path(request: web.Request) -> web.Response:
            self.hits.append(request.path)
            return web.Response(body=b"GIF89a", content_type="image/gif")

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", any_path)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


def _reply(beacon: str) -> Any:
    hostile = f"<script>window.__pwned=1</script> and ![x]({beacon}/beacon) <img src={beacon}/img>"

    def reply(request: RecordedRequest) -> str:
        body = request.json or {}
        text = json.dumps(body.get("messages", []))
        if "response_format" in body or "sentiment" in text.lower():
            return '{"sentiment": "negative"}'
        if "hostile" in text:
            return hostile
        return "Paris is the capital of France."

    return reply


async def _api(http: aiohttp.ClientSession, url: str, method: str, path: str, body: Any) -> Any:
    headers = {"Authorization": f"Bearer {ADMIN}"}
    async with http.request(method, url + path, json=body, headers=headers) as resp:
        data = await resp.json(content_type=None)
        assert resp.status < 300, (path, data)
        return data, resp.headers


async def _seed(url: str) -> str:
    """Traces to label (one of them hostile) and a task with two versions."""
    async with aiohttp.ClientSession() as http:
        hostile_id = ""
        for n, text in enumerate(["hello one", "hello two", "hostile output please", "hi four"]):
            body = {"model": "gpt", "messages": [{"role": "user", "content": text}]}
            _data, headers = await _api(http, url, "POST", "/v1/chat/completions", body)
            if n == 2:
                hostile_id = headers["x-powertrain-trace-id"]
        task = {
            "name": TASK,
            "system": "Classify the sentiment.",
            "user": "Review: {{ review }}",
            "variables": {"review": "string"},
            "model": "gpt",
            "output": {"schema": SCHEMA},
            "variants": {"control": {"weight": 3}, "mini": {"model": "mini", "weight": 1}},
        }
        await _api(http, url, "POST", "/api/tasks", task)
        version = {
            "system": "Classify the sentiment of the review, strictly.",
            "user": "Review: {{ review }}",
            "variables": {"review": "string"},
            "output": {"schema": SCHEMA},
            "labels": ["production"],
        }
        await _api(http, url, "POST", f"/api/tasks/{TASK}/versions", version)
    return hostile_id


async def _eval_run(cwd: Path, env: dict[str, str]) -> None:
    """A tiny suite through the CLI, against the same store as the server."""
    (cwd / "suite.yaml").write_text(
        "name: capitals\n"
        "dataset:\n"
        "  cases:\n"
        "    - {vars: {country: France}, expected: Paris}\n"
        "    - {vars: {country: Peru}, expected: Lima}\n"
        "targets:\n"
        "  - model: gpt\n"
        '    prompt: "Capital of {{ country }}?"\n'
        "  - model: mini\n"
        '    prompt: "Capital of {{ country }}? Answer in one word."\n'
        "assert:\n"
        "  - type: icontains\n",  # the case's expected value
        encoding="utf-8",
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "powertrain.cli", "eval", "run", "suite.yaml",
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode == 0, out.decode(errors="replace")


async def test_the_ui_in_a_real_browser(
    ui_tools: None, tmp_path: Path, server_process: list[ServerProcess]
) -> None:
    async with Beacon() as beacon, FakeOpenAI(reply=_reply(beacon.url)) as upstream:
        (tmp_path / "powertrain.toml").write_text(
            f'[settings]\nadmin_key = "{ADMIN}"\n'
            + openai_model_toml("gpt", upstream.url, extra="price_input = 1\nprice_output = 2\n")
            + openai_model_toml("mini", upstream.url),
            encoding="utf-8",
        )
        env = {**os.environ, "POWERTRAIN_HOME": str(tmp_path / "home")}
        server = await asyncio.to_thread(start_server, tmp_path, env=env)
        server_process.append(server)
        hostile = await _seed(server.url)
        await _eval_run(tmp_path, env)

        if ARTIFACTS.exists():
            shutil.rmtree(ARTIFACTS)
        node = await asyncio.create_subprocess_exec(
            "node", str(UI_DIR / "flows.mjs"),
            cwd=UI_DIR,
            env={
                **os.environ,
                "UI_BASE_URL": server.url,
                "UI_ADMIN_KEY": ADMIN,
                "UI_ARTIFACTS": str(ARTIFACTS),
                "UI_XSS_TRACE": hostile,
                "UI_QUESTION": QUESTION,
                "UI_TASK": TASK,
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(node.communicate(), timeout=150)
        assert node.returncode == 0, err.decode(errors="replace")
        report = json.loads(out.decode().strip().splitlines()[-1])
        assert "error" not in report, report["error"] + "\n" + server.log()[-3000:]

    # No page broke its own Content-Security-Policy or threw.
    assert report["problems"] == []
    # The playground's two calls ran side by side and are traces like any other.
    assert report["playground"]["output_a"] == "Paris is the capital of France."
    assert report["playground"]["output_b"] == "Paris is the capital of France."
    assert report["playground"]["title_b"] == "mini"
    assert report["task_run"]["output"] == '{"sentiment": "negative"}'
    assert report["found_trace"]["url"] == f"/ui/traces/{report['playground']['trace']}"
    assert report["found_trace"]["output"] == "Paris is the capital of France."
    assert "ui" in report["found_trace"]["source"]
    assert report["charts"] >= 2
    assert report["task_page"]["split_rows"] == 2 and report["task_page"]["diff_lines"] > 3
    # Three labelled in the queue, and exactly those three in the dataset built from
    # thumbs up.
    assert report["progress"].startswith("3 of ")
    assert len(set(report["labelled"])) == 3
    assert sorted(report["dataset_traces"]) == sorted(report["labelled"])
    # The eval run's matrix: 2 cases x 2 targets; a cell opens its trace.
    assert report["matrix"]["cells"] == 4
    assert report["matrix"]["passed"] == 2 and report["matrix"]["failed"] == 2
    assert report["matrix"]["drilled_to"].startswith("/ui/traces/tr_")
    # Hostile output is text: no script ran, no image was fetched.
    assert report["xss"]["pwned"] == "undefined"
    assert report["xss"]["pwned_in_list"] == "undefined"
    assert report["xss"]["pwned_in_queue"] == "undefined"
    assert "<script>window.__pwned=1</script>" in report["xss"]["output"]
    assert f"![x]({beacon.url}/beacon)" in report["xss"]["output"]
    assert report["xss"]["images"] == 0
    assert beacon.hits == []
    assert report["after_sign_out"].startswith("/ui/signin")
    shots = {p.stem for p in ARTIFACTS.glob("*.png")}
    assert {p["name"] for p in report["pages"]} <= shots
    assert len(shots) >= 15
