"""``powertrain dataset`` and ``powertrain feedback`` from the terminal, on the store directly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from powertrain.cli import main
from powertrain.schemas.trace import Trace
from powertrain.store import Database, TraceStore
from tests.conftest import config_from, openai_model_toml

TASK = """
[tasks.classify]
system = "Classify the ticket."
user = "Ticket: {{ text }}"
variables = { text = "string" }
model = "cheap"
"""


def cli(*args: str, ok: bool = True) -> Result:
    result = CliRunner().invoke(main, list(args))
    if ok:
        assert result.exit_code == 0, (result.output, result.exception)
    return result


@pytest.fixture
def project(tmp_path: Path) -> Path:
    config_from(tmp_path, openai_model_toml("cheap", "http://127.0.0.1:9") + TASK)
    return tmp_path


def test_datasets_from_files_are_versioned_shown_exported_and_deleted(project: Path) -> None:
    lines = [
        {"input": {"variables": {"text": "refund"}}, "output": "billing"},
        {"vars": {"text": "lost card"}, "expected": "card"},
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "hi <b>{{ x }}</b>"},
                {"role": "assistant", "content": "hello {% raw %}"},
            ]
        },
    ]
    (project / "data").mkdir()
    (project / "data" / "t.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    made = json.loads(cli("dataset", "create", "t", "--from-file", "data/t.jsonl", "--json").stdout)
    assert (made["version"], made["created"], made["rows"]) == (1, True, 3)
    again = cli("dataset", "create", "t", "--from-file", "data/t.jsonl")
    assert "unchanged" in again.stdout and "t@1" in again.stdout
    (project / "t.csv").write_text('text,intent\nrefund,billing\n"a, b",other\n')
    csv_made = json.loads(
        cli(
            "dataset",
            "create",
            "c",
            "--from-file",
            "t.csv",
            "--output-column",
            "intent",
            "--task",
            "classify",
            "--test-fraction",
            "0",
            "--json",
        ).stdout
    )
    assert csv_made["rows"] == 2 and csv_made["test"] == 0

    shown = json.loads(cli("dataset", "show", "t@1", "--json").stdout)
    assert [r["output"] for r in shown["data"]] == ["billing", "card", "hello {% raw %}"]
    assert shown["data"][2]["input"]["messages"][1]["content"] == "hi <b>{{ x }}</b>"
    table = cli("dataset", "show", "t").stdout
    assert "billing" in table and "hello {% raw %}" in table  # printed as data
    listed = json.loads(cli("dataset", "list", "--json").stdout)
    assert [d["name"] for d in listed] == ["c", "t"]

    cli("dataset", "export", "c", "--format", "openai", "-o", "out/c.jsonl")
    records = [json.loads(x) for x in (project / "out" / "c.jsonl").read_text().splitlines()]
    assert records[1]["messages"] == [
        {"role": "system", "content": "Classify the ticket."},
        {"role": "user", "content": "Ticket: a, b"},
        {"role": "assistant", "content": "other"},
    ]
    outside = project.parent / f"{project.name}-escaped.jsonl"
    refused = cli("dataset", "export", "c", "-o", str(outside), ok=False)
    assert refused.exit_code == 1 and "relative to the working directory" in refused.output
    assert not outside.exists()
    out = cli("dataset", "export", "t", "--format", "openai", "--task", "classify").stdout
    chats = [json.loads(x) for x in out.splitlines()]
    assert [[m["role"] for m in c["messages"]] for c in chats] == [
        ["system", "user", "assistant"],
        ["system", "user", "assistant"],
        ["system", "user", "assistant"],
    ]
    assert chats[2]["messages"][1]["content"] == "hi <b>{{ x }}</b>"  # verbatim, not rendered
    cases = [
        json.loads(x) for x in cli("dataset", "export", "t", "--format", "eval").stdout.splitlines()
    ]
    assert cases[0] == {"vars": {"text": "refund"}, "expected": "billing"}
    assert cases[2]["messages"][-1] == {"role": "user", "content": "hi <b>{{ x }}</b>"}
    no_task = cli("dataset", "export", "t", "--format", "openai", ok=False)
    assert no_task.exit_code == 1 and "no task to render" in no_task.output

    cli("dataset", "delete", "t", "--yes")
    gone = cli("dataset", "show", "t", ok=False)
    assert gone.exit_code == 1 and "no dataset named 't'" in gone.output
    assert [d["name"] for d in json.loads(cli("dataset", "list", "--json").stdout)] == ["c"]


@pytest.mark.parametrize(
    "name",
    [
        "../secret.jsonl",
        "/etc/passwd",
        "data/..%2f..%2fsecret.jsonl",
        "a\x00.jsonl",
        "%2e%2e/x.jsonl",
    ],
)
def test_paths_outside_the_root_are_refused(project: Path, name: str) -> None:
    (project.parent / "secret.jsonl").write_text('{"input": "x", "output": "y"}\n')
    result = cli("dataset", "create", "x", "--from-file", name, ok=False)
    assert result.exit_code == 1, result.output
    assert "contains" in result.output or "absolute" in result.output
    out = cli("dataset", "export", "x", "-o", name, ok=False)
    assert out.exit_code == 1


def test_a_symlink_out_of_the_root_is_refused(project: Path) -> None:
    (project.parent / "outside.jsonl").write_text('{"input": "x", "output": "y"}\n')
    (project / "link.jsonl").symlink_to(project.parent / "outside.jsonl")
    result = cli("dataset", "create", "x", "--from-file", "link.jsonl", ok=False)
    assert result.exit_code == 1 and "resolves outside" in result.output


def test_bad_lines_are_named(project: Path) -> None:
    (project / "bad.jsonl").write_text('{"input": "ok", "output": "y"}\n\n{"input": \n')
    result = cli("dataset", "create", "x", "--from-file", "bad.jsonl", ok=False)
    assert result.exit_code == 1 and "bad.jsonl line 3: not valid JSON" in result.output
    (project / "odd.jsonl").write_text('{"inptu": "typo"}\n')
    result = cli("dataset", "create", "x", "--from-file", "odd.jsonl", ok=False)
    assert "odd.jsonl line 1: unknown field 'inptu'" in result.output
    (project / "t.csv").write_text("a,b\n1,2,3\n")
    result = cli("dataset", "create", "x", "--from-file", "t.csv", ok=False)
    assert "t.csv line 2: more values than header columns" in result.output
    result = cli("dataset", "create", "x", "--from-file", "t.csv", "--output-column", "z", ok=False)
    assert "no column 'z'" in result.output


def test_feedback_from_the_cli_and_datasets_from_traces(project: Path) -> None:
    from powertrain.config import load_config

    db = Database(load_config(project / "powertrain.toml").settings.resolved_database_url)
    one = Trace(
        model="task:classify", task="classify", request={"variables": {"text": "a"}}, output="x"
    )
    two = Trace(
        model="task:classify", task="classify", request={"variables": {"text": "b"}}, output="y"
    )
    TraceStore(db).insert_many([one, two])
    db.dispose()
    given = json.loads(
        cli(
            "feedback",
            one.id,
            "--up",
            "--score",
            "4",
            "--label",
            "billing",
            "--author",
            "me",
            "--json",
        ).stdout
    )
    assert (given["thumb"], given["score"], given["author"]) == ("up", 4.0, "me")
    cli("feedback", two.id, "--correct", '{"intent": "z"}', "--correct-json")
    shown = json.loads(cli("feedback", two.id, "--json").stdout)
    assert shown[0]["correction"] == {"intent": "z"}
    assert "billing" in cli("feedback", one.id).stdout
    missing = cli("feedback", "tr_nope", "--up", ok=False)
    assert missing.exit_code == 1 and "no trace with id 'tr_nope'" in missing.output
    bad = cli("feedback", one.id, "--score", "9", "--scale", "5", ok=False)
    assert bad.exit_code == 1 and "between 0 and the scale" in bad.output

    up = json.loads(
        cli(
            "dataset",
            "create",
            "up",
            "--from-traces",
            "--task",
            "classify",
            "--feedback",
            "up",
            "--json",
        ).stdout
    )
    assert up["rows"] == 1
    fixed = json.loads(
        cli(
            "dataset",
            "create",
            "fx",
            "--from-traces",
            "--task",
            "classify",
            "--feedback",
            "corrected",
            "--json",
        ).stdout
    )
    assert fixed["rows"] == 1
    rows = json.loads(cli("dataset", "show", "fx", "--json").stdout)["data"]
    assert rows[0]["output"] == {"intent": "z"} and rows[0]["source"]["trace_id"] == two.id
    scored = json.loads(
        cli("dataset", "create", "s", "--from-traces", "--feedback", "score>=4", "--json").stdout
    )
    assert scored["rows"] == 1
    bad_rule = cli("dataset", "create", "s", "--from-traces", "--feedback", "meh", ok=False)
    assert bad_rule.exit_code != 0 and "unknown feedback filter" in bad_rule.output
