"""``powertrain keys``: made, listed, changed and revoked from the terminal, then used over HTTP."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from powertrain.cli import main
from tests.conftest import config_from
from tests.fakes import FakeOpenAI
from tests.keys_helpers import chat, keyed_config, served


def keys(*args: str, ok: bool = True) -> Result:
    result = CliRunner().invoke(main, ["keys", *args])
    if ok:
        assert result.exit_code == 0, (result.output, result.exception)
    return result


def listed() -> dict[str, dict[str, Any]]:
    return {k["name"]: k for k in json.loads(keys("list", "--json").stdout)}


async def test_keys_from_the_cli_work_on_the_server(tmp_path: Path) -> None:
    async with FakeOpenAI() as upstream:
        config = keyed_config(tmp_path, upstream.url)

        made = keys("create", "--name", "ci", "--rpm", "5", "--budget", "0.5", "--models", "paid")
        secret = made.stdout.strip()
        assert secret.startswith("pt-") and made.stdout == secret + "\n"  # the key alone
        assert "cannot be shown again" in made.stderr

        batch = json.loads(
            keys(
                "create", "--name", "batch", "--tpm", "1000", "--models", "paid,cheap", "--json"
            ).stdout
        )
        assert batch["key"].startswith("pt-") and batch["models"] == ["paid", "cheap"]

        rows = listed()
        assert set(rows) == {"ci", "batch"}
        assert rows["ci"]["rpm"] == 5 and rows["ci"]["budget_usd"] == 0.5
        assert rows["ci"]["prefix"] == secret[:10]
        everything = keys("list", "--json").stdout
        assert secret not in everything and batch["key"] not in everything
        table = keys("list").stdout
        assert "ci" in table and "batch" in table and secret[:10] in table
        assert secret not in table

        keys("update", "ci", "--budget", "1", "--rpm", "none", "--models", "paid,cheap")
        rows = listed()
        assert rows["ci"]["budget_usd"] == 1 and rows["ci"]["rpm"] is None
        assert rows["ci"]["models"] == ["paid", "cheap"]

        revoked = json.loads(keys("revoke", "batch", "--json").stdout)
        assert revoked["revoked_at"] is not None

        refused = keys("create", "--name", "x", "--models", "nope", ok=False)
        assert refused.exit_code == 1 and "'nope' is not in the catalog" in refused.output
        refused = keys("revoke", "key_missing", ok=False)
        assert refused.exit_code == 1 and "keys list" in refused.output
        refused = keys("create", "--name", "x", "--rpm", "0", ok=False)
        assert refused.exit_code == 2

        upstream.usage = (3, 10)
        async with served(config) as api:
            status, body, _ = await api.call(
                "POST", "/v1/chat/completions", chat(max_tokens=10), key=secret
            )
            assert status == 200, body
            status, _body, _ = await api.call(
                "POST", "/v1/chat/completions", chat("cheap"), key=batch["key"]
            )
            assert status == 401
            await api.app.gateway.access.drain()
        rows = listed()
        assert rows["ci"]["spend_usd"] == 0.01 and rows["ci"]["remaining_usd"] == 0.99
        assert rows["ci"]["last_used_at"] is not None
        assert "$0.01" in keys("list").stdout


def test_the_redis_password_is_a_secret(tmp_path: Path) -> None:
    config = config_from(
        tmp_path, '[settings]\nredis_url = "redis://:hunter2-redis@127.0.0.1:6379/0"\n'
    )
    assert "hunter2-redis" in config.secrets()  # scrubbed from errors, logs and traces
    result = CliRunner().invoke(main, ["settings", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["redis_url"]["value"] == "redis://:***@127.0.0.1:6379/0"
    assert "hunter2" not in result.output
