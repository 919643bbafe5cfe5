"""The web UI in headless Chromium, against a real ``powertrain serve``.

Debian's ``chromium`` is driven by ``playwright-core`` (``tests/ui/flows.mjs``; never a
browser download): sign in, a playground call (two models side by side) and a task
run, find the call's trace, label three traces from the annotation queue and find
them in a dataset built from feedback, open an eval run's matrix and drill into a
cell's trace, check that a trace whose output holds ``<script>`` and a markdown
image renders as inert text (no script ran, nothing was fetched), and follow a
classifier fine-tune (started over the API at the beginning, so it trains while the
rest runs) to its scores, the methods compared and a canary from its page. Every
page visited is saved as a PNG under ``test-artifacts/ui/``.

Needs ``/usr/bin/chromium`` and ``tests/ui/node_modules`` (``make ui-test-deps``):
skipped without them, unless ``POWERTRAIN_TEST_UI=1`` (CI), where that is a failure.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from powertrain.config import load_config
from powertrain.store import Database
from powertrain.store.finetune import FineTuneStore
from tests.conftest import REPO, ServerProcess, openai_model_toml, start_server
from tests.fakes import FakeOpenAI
from tests.fakes.upstreams import RecordedRequest
from tests.ui_helpers import sentiment_rows

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


async def _start_finetune(url: str) -> str:
    """A dataset of 60 reviews and a classifier job on it, started over the API so that it
    trains (in its worker process) while the other flows run; the UI follows it later."""
    async with aiohttp.ClientSession() as http:
        body = {"name": "reviews", "rows": sentiment_rows(), "test_fraction": 0.25, "seed": 1}
        await _api(http, url, "POST", "/api/datasets", body)
        job = {"task": TASK, "dataset": "reviews", "method": "classifier"}
        started, _headers = await _api(http, url, "POST", "/api/finetune/jobs", job)
        return str(started["id"])


def _stopped_lora_job(tmp_path: Path, env: dict[str, str]) -> str:
    """A LoRA job cancelled at step 120 of 300, written into the server's store as its
    worker would have left it: a real training curve to draw takes minutes, this takes
    nothing (the page only reads the record)."""
    config = load_config(tmp_path / "powertrain.toml", environ=env)
    database = Database(config.settings.resolved_database_url)
    try:
        store = FineTuneStore(database)
        job = store.create_job(
            task=TASK,
            owner="",
            dataset="reviews",
            dataset_version=1,
            method="lora",
            base_model="gpt",
            params={"variant": "control", "encoder": "minilm", "seed": 0, "limit": None,
                    "settings": {"epochs": 3, "rank": 8, "learning_rate": 0.0002}},
        )  # fmt: skip
        loss = [
            [step, 2.3 * math.exp(-step / 35) + 0.4 + 0.08 * math.sin(step * 1.7)]
            for step in range(1, 121)
        ]
        evals = [[step, 2.4 * math.exp(-step / 40) + 0.55] for step in (0, 40, 80, 120)]
        store.update_job(
            job.id,
            status="cancelled",
            started_at=job.created_at,
            finished_at=job.created_at,
            duration_s=95.0,
            curves={"loss": loss, "eval_loss": evals},
            progress={"step": 120, "total": 300, "phase": "train", "metrics": {"loss": 0.61}},
            metrics={"train_examples": 48, "test_examples": 12, "skipped_rows": 0},
        )
        return job.id
    finally:
        database.dispose()


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
        finetune = await _start_finetune(server.url)
        stopped = await asyncio.to_thread(_stopped_lora_job, tmp_path, env)
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
                "UI_FINETUNE_JOB": finetune,
                "UI_CURVES_JOB": stopped,
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(node.communicate(), timeout=300)
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
    # The fine-tune: the start form's refusal, the job trained and scored beside the base
    # (which always answers "negative"), the methods compared, and a canary from its page.
    assert "settings are not valid JSON" in report["finetune"]["start_error"]
    assert report["finetune"]["status"] == "succeeded"
    assert report["finetune"]["model"] == "classifier:sentiment-v1"
    assert "eval loss" in report["finetune"]["loss"]  # measured once: a number, no chart
    # A job with curves: train loss as one line, eval loss as a marker per measure.
    assert report["finetune"]["curves"] == {"lines": 2, "dots": 4}
    assert report["finetune"]["recommended"] == "classifier-v1"
    assert report["finetune"]["history"][0].startswith("canary classifier-v1")
    assert "classifier-v1 25.0%" in report["finetune"]["history"][0]
    shots = {p.stem for p in ARTIFACTS.glob("*.png")}
    assert {p["name"] for p in report["pages"]} <= shots
    assert len(shots) >= 15
