"""Shared fixtures: an isolated data directory, real servers on 127.0.0.1, a fresh Postgres DB."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn

from powertrain.config import Config, load_config
from powertrain.server import create_app
from powertrain.server.app import PowertrainApp

REPO = Path(__file__).resolve().parent.parent
POSTGRES_ENV = "POWERTRAIN_TEST_POSTGRES_URL"


@pytest.fixture(scope="session", autouse=True)
def _close_llama_devnull() -> Iterator[None]:
    """llama-cpp-python opens /dev/null at import and never closes it; do it at the end."""
    yield
    utils = sys.modules.get("llama_cpp._utils")
    for name in ("outnull_file", "errnull_file"):
        handle = getattr(utils, name, None)
        if handle is not None:
            handle.close()


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own data directory and working directory, and no POWERTRAIN_* leaks in."""
    for name in list(os.environ):
        if name.startswith("POWERTRAIN_") and not name.startswith("POWERTRAIN_TEST_"):
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    monkeypatch.setenv("POWERTRAIN_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    return home


def write_config(directory: Path, text: str) -> Path:
    path = directory / "powertrain.toml"
    path.write_text(text, encoding="utf-8")
    return path


def openai_model_toml(
    alias: str, base_url: str, *, api_key: str = "sk-test", extra: str = ""
) -> str:
    return (
        f'[models.{alias}]\nengine = "openai"\nmodel = "{alias}-upstream"\n'
        f'base_url = "{base_url}"\napi_key = "{api_key}"\n{extra}\n'
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def serving(config: Config) -> AsyncIterator[tuple[str, PowertrainApp]]:
    """The real app under uvicorn on a free loopback port, in this event loop, with its app
    (so a test can reach its gateway, engines and trace writer)."""
    app = create_app(config)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", loop="asyncio"
        )
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=30)


@contextlib.asynccontextmanager
async def running_app(config: Config) -> AsyncIterator[str]:
    """``serving`` for tests that only need the URL."""
    async with serving(config) as (url, _app):
        yield url


async def eventually(check: Callable[[], bool], what: str, within: float = 15.0) -> None:
    """Wait for state that offers no event to await (a writer's counters, a worker's slots)."""
    deadline = asyncio.get_running_loop().time() + within
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {within:g} s: {what}")
        await asyncio.sleep(0.02)


@dataclass
class ServerProcess:
    """``powertrain serve`` in a child process, as a user would start it."""

    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)


def start_server(
    cwd: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> ServerProcess:
    port = free_port()
    log_path = cwd / f"server-{port}.log"
    full_env = {**os.environ, **(env or {})}
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "powertrain.cli", "serve", "--port", str(port), *args],
            cwd=cwd,
            env=full_env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early:\n{log_path.read_text()}")
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=1) as resp:
                if resp.status == 200:
                    return ServerProcess(proc, url, log_path)
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"server did not become ready:\n{log_path.read_text()}")


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[list[ServerProcess]]:
    """Collects servers started in a test and makes sure none outlives it."""
    started: list[ServerProcess] = []
    yield started
    for server in started:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait(timeout=30)


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """A fresh database on the configured PostgreSQL server, dropped afterwards."""
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        pytest.skip(f"{POSTGRES_ENV} is not set")
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"pt_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(base).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"),
                {"n": name},
            )
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Store tests run on both backends (Postgres only when its URL is set)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return str(request.getfixturevalue("postgres_server_url"))


def config_from(directory: Path, text: str = "") -> Config:
    return load_config(write_config(directory, text))
