"""The `powertrain` command as a user runs it (a real subprocess, the real model)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import write_config


def cli(
    *args: str, stdin: str | None = None, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "powertrain.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def test_help_lists_the_commands() -> None:
    out = cli("--help").stdout
    for command in ("serve", "run", "chat", "models", "logs", "settings"):
        assert command in out


def test_models_table_and_json(tmp_path: Path) -> None:
    write_config(
        tmp_path,
        '[models.gpt]\nengine = "openai"\nmodel = "gpt-4o-mini"\n'
        "price_input = 0.15\nprice_output = 0.6\ncontext_window = 128000\n",
    )
    models = {m["alias"]: m for m in json.loads(cli("models", "--json").stdout)}
    assert models["smollm2"]["engine"] == "llamacpp"
    assert models["gpt"]["price_output"] == 0.6 and models["gpt"]["context_window"] == 128000
    assert "api_key" not in models["gpt"]
    table = cli("models").stdout
    assert "smollm2" in table and "gpt-4o-mini" in table


@pytest.mark.model
def test_run_streams_an_answer_and_records_a_trace() -> None:
    result = cli("run", "What is 2+2? Answer briefly.", "-t", "0", "--max-tokens", "20")
    assert "4" in result.stdout
    trace_id = result.stderr.strip().split()[-1]
    assert trace_id.startswith("tr_")

    traces = json.loads(cli("logs", "--json", "-n", "5").stdout)
    assert traces[0]["id"] == trace_id
    assert traces[0]["metadata"]["source"] == "cli" and traces[0]["stream"] is True
    shown = json.loads(cli("logs", "show", trace_id, "--json").stdout)
    assert shown["output"].strip() == result.stdout.strip()
    assert shown["completion_tokens"] > 0
    assert trace_id in cli("logs").stdout


@pytest.mark.model
def test_run_json_and_stdin() -> None:
    out = json.loads(
        cli("run", "--json", "-t", "0", "--max-tokens", "8", stdin="Say hello.").stdout
    )
    assert out["text"] and out["trace_id"].startswith("tr_") and out["usage"]["total_tokens"] > 0


@pytest.mark.model
def test_chat_keeps_history() -> None:
    result = cli(
        "chat", "-t", "0", "--max-tokens", "12", stdin="My name is Ada.\nWhat is my name?\n/exit\n"
    )
    assert result.returncode == 0
    traces: list[dict[str, Any]] = json.loads(cli("logs", "--json", "-n", "2").stdout)
    second = traces[0]["request"]["messages"]
    assert [m["role"] for m in second] == ["user", "assistant", "user"]
    assert second[0]["content"] == "My name is Ada."


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["run", "hi", "-m", "nope"], "model 'nope' is not in the catalog"),
        (["logs", "show", "tr_missing"], "no trace with id"),
    ],
)
def test_errors_are_one_actionable_line(args: list[str], expected: str) -> None:
    result = cli(*args, check=False)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0]
    assert "Traceback" not in result.stderr


def test_bad_config_is_one_line(tmp_path: Path) -> None:
    write_config(tmp_path, "[models.x]\nengine = 3\n")
    result = cli("models", check=False)
    assert result.returncode == 1
    assert "[models.x]" in result.stderr and len(result.stderr.strip().splitlines()) == 1

    write_config(tmp_path, "[settings]\nport = 'many'\n")
    result = cli("models", check=False)
    assert result.returncode == 1 and "port" in result.stderr


def test_serve_refuses_public_bind_without_auth() -> None:
    result = cli("serve", "--host", "0.0.0.0", "--port", "1", check=False, timeout=30)
    assert result.returncode == 1
    assert "POWERTRAIN_ADMIN_KEY" in result.stderr


def test_serve_on_a_taken_port_is_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = cli("serve", "--port", port, check=False, timeout=30)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "--port" in lines[0]


def test_settings_json_lists_every_setting() -> None:
    rows = {r["name"]: r for r in json.loads(cli("settings", "--json").stdout)}
    assert rows["host"]["value"] == "127.0.0.1"
    assert {"database_url", "admin_key", "max_body_bytes", "request_timeout"} <= set(rows)
