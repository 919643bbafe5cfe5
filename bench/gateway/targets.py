"""The systems under test: how to start each one in front of the fake upstream.

- ``direct``: no gateway, the client calls the upstream itself (the baseline);
- ``bare``: the bare pass-through proxy (``bare_proxy.py``) under uvicorn (the floor);
- ``litellm``: LiteLLM's proxy, one worker, a master key, no database;
- ``powertrain``: ``powertrain serve`` with tracing (always on), the default
  in-process cache (every request misses: the load is unique) and an admin key;
- ``stages``: the same with every request-path stage of issue 5 on: a virtual
  key with rpm/tpm limits and a budget, PII redaction on input and output,
  injection and banned-term guardrails, and the cache.

Every gateway is pinned to the gateway core; the upstream and the load
generator share the other one.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import sys
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from bench.gateway import litellm_venv
from bench.gateway.procs import Server, free_port
from bench.gateway.procs import start_powertrain as start_powertrain_server

UPSTREAM_KEY = "sk-bench"
LITELLM_MASTER_KEY = "sk-bench-litellm-master"
POWERTRAIN_ADMIN_KEY = "sk-bench-powertrain-admin"
UPSTREAM_MODEL = "bench-model"
GATEWAY_MODEL = "bench"

TARGET_NAMES = ("direct", "bare", "litellm", "powertrain", "stages")


@dataclass(frozen=True)
class Endpoint:
    """Where the load generator sends chat completions, as whom, for which model."""

    url: str
    model: str
    api_key: str


@dataclass(frozen=True)
class Context:
    upstream: str  # e.g. http://127.0.0.1:9000 (no /v1)
    gateway_cpu: int | None
    workdir: Path
    say: Callable[[str], None]


@dataclass
class Running:
    name: str
    endpoint: Endpoint
    server: Server | None
    version: str = ""
    trace_db: Path | None = None  # a SQLite store whose ``traces`` rows can be counted

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    def stored_traces(self) -> int | None:
        """Rows in the store's ``traces`` table (after stop, so the writer has flushed)."""
        if self.trace_db is None or not self.trace_db.is_file():
            return None
        try:
            with contextlib.closing(sqlite3.connect(self.trace_db)) as db:
                return int(db.execute("SELECT count(*) FROM traces").fetchone()[0])
        except sqlite3.Error:
            return None


def start_direct(ctx: Context) -> Running:
    endpoint = Endpoint(f"{ctx.upstream}/v1/chat/completions", UPSTREAM_MODEL, UPSTREAM_KEY)
    return Running("direct", endpoint, None, "fake upstream")


def start_bare(ctx: Context) -> Running:
    port = free_port()
    cmd = [
        sys.executable, "-m", "uvicorn", "bench.gateway.bare_proxy:app",
        "--host", "127.0.0.1", "--port", str(port),
        "--loop", "uvloop", "--http", "httptools",
        "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip
    env: dict[str, str | None] = {
        "BENCH_UPSTREAM": ctx.upstream,
        "BENCH_UPSTREAM_KEY": UPSTREAM_KEY,
    }
    server = Server.start("bare", cmd, ctx.workdir / "bare.log", ctx.gateway_cpu, env)
    base = f"http://127.0.0.1:{port}"
    server.wait_healthy(f"{base}/healthz", timeout=30)
    version = f"uvicorn {metadata.version('uvicorn')} + aiohttp {metadata.version('aiohttp')}"
    endpoint = Endpoint(f"{base}/v1/chat/completions", UPSTREAM_MODEL, UPSTREAM_KEY)
    return Running("bare", endpoint, server, version)


def litellm_config(upstream: str) -> str:
    return (
        "model_list:\n"
        f"  - model_name: {GATEWAY_MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{UPSTREAM_MODEL}\n"
        f"      api_base: {upstream}/v1\n"
        f"      api_key: {UPSTREAM_KEY}\n"
        "general_settings:\n"
        f"  master_key: {LITELLM_MASTER_KEY}\n"
    )


def start_litellm(ctx: Context) -> Running:
    litellm = litellm_venv.ensure_litellm(ctx.say)
    config = ctx.workdir / "litellm.yaml"
    config.write_text(litellm_config(ctx.upstream), encoding="utf-8")
    port = free_port()
    cmd = [
        str(litellm), "--config", str(config),
        "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1",
    ]  # fmt: skip
    # Offline: use the model cost map bundled in the wheel instead of fetching it.
    env: dict[str, str | None] = {
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "DATABASE_URL": None,
        "LITELLM_MASTER_KEY": None,
    }
    server = Server.start(
        "litellm", cmd, ctx.workdir / "litellm.log", ctx.gateway_cpu, env, cwd=ctx.workdir
    )
    base = f"http://127.0.0.1:{port}"
    server.wait_healthy(f"{base}/health/liveliness", timeout=180)
    endpoint = Endpoint(f"{base}/v1/chat/completions", GATEWAY_MODEL, LITELLM_MASTER_KEY)
    return Running("litellm", endpoint, server, f"litellm {litellm_venv.LITELLM_VERSION}")


def powertrain_config(upstream: str, home: Path) -> str:
    return (
        "[settings]\n"
        f'home = "{home}"\n'
        f'admin_key = "{POWERTRAIN_ADMIN_KEY}"\n'
        "\n"
        f"[models.{GATEWAY_MODEL}]\n"
        'engine = "openai"\n'
        f'model = "{UPSTREAM_MODEL}"\n'
        f'base_url = "{upstream}/v1"\n'
        f'api_key = "{UPSTREAM_KEY}"\n'
    )


def start_powertrain(ctx: Context) -> Running:
    home = ctx.workdir / "powertrain-home"
    home.mkdir(parents=True, exist_ok=True)
    server, base = start_powertrain_server(
        ctx.workdir, powertrain_config(ctx.upstream, home), ctx.gateway_cpu
    )
    endpoint = Endpoint(f"{base}/v1/chat/completions", GATEWAY_MODEL, POWERTRAIN_ADMIN_KEY)
    return Running("powertrain", endpoint, server, "powertrain", home / "powertrain.db")


STAGES_CONFIG = """
[guardrails.pii]
type = "pii"
action = "redact"

[guardrails.injection]
type = "injection"
action = "block"

[guardrails.competitors]
type = "banned_terms"
terms = ["globex", "initech"]
action = "block"

[cache]
enabled = true
"""


def start_stages(ctx: Context) -> Running:
    home = ctx.workdir / "stages-home"
    home.mkdir(parents=True, exist_ok=True)
    config = powertrain_config(ctx.upstream, home) + STAGES_CONFIG
    server, base = start_powertrain_server(ctx.workdir, config, ctx.gateway_cpu)
    # A virtual key whose limits never bind but are checked and counted on every call.
    body = json.dumps(
        {"name": "bench", "rpm": 10_000_000, "tpm": 10_000_000_000, "budget_usd": 1_000_000}
    ).encode()
    request = urllib.request.Request(
        f"{base}/api/keys",
        data=body,
        headers={
            "Authorization": f"Bearer {POWERTRAIN_ADMIN_KEY}",
            "Content-Type": "application/json",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            key = json.load(response)["key"]
    except BaseException:
        server.stop()  # a target that cannot start must not keep running
        raise
    endpoint = Endpoint(f"{base}/v1/chat/completions", GATEWAY_MODEL, key)
    return Running("stages", endpoint, server, "powertrain, all stages", home / "powertrain.db")


STARTERS: dict[str, Callable[[Context], Running]] = {
    "direct": start_direct,
    "bare": start_bare,
    "litellm": start_litellm,
    "powertrain": start_powertrain,
    "stages": start_stages,
}
