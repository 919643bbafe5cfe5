"""``powertrain task``: list, show, render, run and label, through click's test runner."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from powertrain.cli import main
from tests.conftest import write_config

SCHEMA = {
    "type": "object",
    "properties": {"sentiment": {"type": "string", "enum": ["positive", "negative"]}},
    "required": ["sentiment"],
    "additionalProperties": False,
}

SENTIMENT = """
[tasks.sentiment]
description = "Sentiment of a review"
system = "Classify the sentiment of the review."
user = "{user}"
variables = {{ review = "string" }}
params = {{ temperature = 0 }}
[tasks.sentiment.output]
schema = {{ type = "object", properties = {{ sentiment = {{ type = "string", enum = ["positive", "negative"] }} }}, required = ["sentiment"], additionalProperties = false }}
[[tasks.sentiment.examples]]
variables = {{ review = "I loved it" }}
output = {{ sentiment = "positive" }}
[tasks.sentiment.variants.a]
model = "smollm2"
weight = 3
[tasks.sentiment.variants.b]
examples = 0
weight = 1
"""

COUNT = """
[tasks.count]
user = "List {{ n }} colours{% if shout %} LOUDLY{% endif %}."
variables = { n = "integer", shout = { type = "boolean", required = false } }
"""


def configure(directory: Path, user: str = "Review: {{ review }}") -> None:
    write_config(directory, SENTIMENT.format(user=user) + COUNT)


@pytest.fixture(autouse=True)
def _config(tmp_path: Path) -> None:
    configure(tmp_path)


def invoke(*args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(main, list(args), input=stdin)


def ok(*args: str, stdin: str | None = None) -> Result:
    result = invoke(*args, stdin=stdin)
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"
    return result


def ok_json(*args: str, stdin: str | None = None) -> Any:
    return json.loads(ok(*args, "--json", stdin=stdin).stdout)


def error_line(*args: str) -> str:
    """The command fails with exit 1 and exactly one line on stderr (no traceback)."""
    result = invoke(*args)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ") and "Traceback" not in result.stderr
    return lines[0]


# -- list and show --------------------------------------------------------------------------


def test_task_appears_in_help() -> None:
    assert "task" in ok("--help").stdout
    out = ok("task", "--help").stdout
    for command in ("list", "show", "render", "run", "label"):
        assert command in out
    assert "Example" in ok("task", "run", "--help").stdout


def test_list_json_and_table() -> None:
    tasks = {t["name"]: t for t in ok_json("task", "list")}
    assert set(tasks) == {"count", "sentiment"}
    sentiment = tasks["sentiment"]
    assert sentiment["source"] == "config"
    assert sentiment["description"] == "Sentiment of a review"
    assert sentiment["latest_version"] == 1
    assert sentiment["labels"] == {"latest": 1, "production": 1}
    variants = {v["name"]: v for v in sentiment["variants"]}
    assert variants["a"]["share"] == 0.75 and variants["b"]["share"] == 0.25
    assert variants["a"]["model"] == variants["b"]["model"] == "smollm2"
    assert variants["a"]["resolved_version"] == 1 and variants["a"]["version"] == "production"
    assert variants["b"]["examples"] == 0 and variants["a"]["examples"] is None
    assert variants["a"]["params"] == {"temperature": 0}
    assert [v["name"] for v in tasks["count"]["variants"]] == ["default"]

    table = ok("task", "list").stdout
    row = next(line for line in table.splitlines() if "sentiment" in line)
    assert "config" in row and "production→1, latest→1" in row
    assert "a 75%, b 25%" in row and "Sentiment of a review" in row


def test_show_json_and_table() -> None:
    detail = ok_json("task", "show", "sentiment")
    [version] = detail["versions"]
    assert version["version"] == 1 and version["source"] == "config"
    assert version["labels"] == ["production", "latest"]
    assert len(version["content_hash"]) == 64
    assert detail["settings"]["repairs"] == 2
    assert detail["settings"]["context"] == {"on_overflow": "error"}
    content = detail["content"]
    assert content["version"] == 1 and content["user"] == "Review: {{ review }}"
    assert content["variables"]["review"]["type"] == "string" and content["input"] == "review"
    assert content["output_schema"] == SCHEMA

    out = ok("task", "show", "sentiment").stdout
    assert version["content_hash"][:12] in out
    assert "production → 1" in out and "75%" in out and "25%" in out
    assert 'object {sentiment: "positive" | "negative"}' in out
    assert "review (input)" in out and "repairs: 2" in out and "context overflow: error" in out

    count = ok("task", "show", "count").stdout
    assert "text (no schema)" in count and "integer" in count and "boolean" in count


def test_a_changed_template_is_version_2(tmp_path: Path) -> None:
    ok("task", "list")  # version 1 is stored
    configure(tmp_path, user="The review: {{ review }}")
    [sentiment] = [t for t in ok_json("task", "list") if t["name"] == "sentiment"]
    assert sentiment["latest_version"] == 2
    assert sentiment["labels"] == {"latest": 2, "production": 2}

    detail = ok_json("task", "show", "sentiment")
    assert [(v["version"], v["labels"]) for v in detail["versions"]] == [
        (1, []),
        (2, ["production", "latest"]),
    ]
    assert detail["versions"][0]["content_hash"] != detail["versions"][1]["content_hash"]
    assert detail["content"]["user"] == "The review: {{ review }}"
    old = ok_json("task", "show", "sentiment", "--version", "1")
    assert old["content"]["version"] == 1 and old["content"]["user"] == "Review: {{ review }}"

    # Re-running on an unchanged file makes no version 3.
    assert ok_json("task", "show", "sentiment")["latest_version"] == 2


# -- render ---------------------------------------------------------------------------------


def test_render_shows_the_exact_messages_and_keeps_template_syntax_literal() -> None:
    plan = ok_json("task", "render", "sentiment", "--var", "review={{ 7*7 }}", "--variant", "a")
    assert (plan["task"], plan["variant"], plan["version"], plan["model"]) == (
        "sentiment",
        "a",
        1,
        "smollm2",
    )
    system, *rest = plan["messages"]
    assert system["role"] == "system"
    assert system["content"].startswith("Classify the sentiment of the review.\n\n")
    assert json.dumps(SCHEMA, separators=(",", ":")) in system["content"]
    assert rest == [
        {"role": "user", "content": "Review: I loved it"},
        {"role": "assistant", "content": '{"sentiment": "positive"}'},
        {"role": "user", "content": "Review: {{ 7*7 }}"},
    ]
    assert plan["prompt_tokens"] > 20
    assert plan["examples_used"] == 1 and plan["examples_dropped"] == 0
    assert plan["request"]["messages"] == plan["messages"]
    assert plan["request"]["temperature"] == 0
    assert plan["request"]["response_format"]["json_schema"]["schema"] == SCHEMA

    # Variant b shows no examples.
    plan_b = ok_json("task", "render", "sentiment", "--var", "review=meh", "--variant", "b")
    assert [m["role"] for m in plan_b["messages"]] == ["system", "user"]
    assert plan_b["examples_used"] == 0 and plan_b["examples_dropped"] == 1


def test_render_text_prints_content_verbatim() -> None:
    review = "[bold]{{ 7*7 }}[/bold] {% raw %}"
    result = ok("task", "render", "sentiment", "--var", f"review={review}", "--variant", "a")
    assert result.stdout.endswith(f"── user ──\nReview: {review}\n")
    assert "── assistant ──\n" + '{"sentiment": "positive"}\n' in result.stdout
    assert "49" not in result.stdout
    meta = result.stderr
    assert "variant a" in meta and "version 1" in meta and "model smollm2" in meta
    assert "prompt tokens" in meta and "1 few-shot example" in meta


def test_render_typed_variables_file_and_stdin(tmp_path: Path) -> None:
    def user_message(*args: str, stdin: str | None = None) -> str:
        plan = ok_json("task", "render", *args, stdin=stdin)
        return str(plan["messages"][-1]["content"])

    assert user_message("count", "--var", "n=3", "--var", "shout=true") == "List 3 colours LOUDLY."
    assert user_message("count", "--vars-json", '{"n": 2, "shout": false}') == "List 2 colours."
    # --var wins over --vars-json.
    assert user_message("count", "--vars-json", '{"n": 2}', "--var", "n=5") == "List 5 colours."
    (tmp_path / "vars.json").write_text('{"n": 4}')
    assert user_message("count", "--vars-json", "@vars.json") == "List 4 colours."

    (tmp_path / "review.txt").write_text("Long review\nfrom a file\n")
    sent = user_message("sentiment", "--variant", "b", "--var", "review=@review.txt")
    assert sent == "Review: Long review\nfrom a file\n"
    sent = user_message("sentiment", "--variant", "b", "--var", "review=\\@handle")
    assert sent == "Review: @handle"
    # The task's input variable comes from stdin when it is not given.
    sent = user_message("sentiment", "--variant", "b", stdin="Piped review")
    assert sent == "Review: Piped review"
    # ...and --var still wins over stdin.
    sent = user_message("sentiment", "--variant", "b", "--var", "review=given", stdin="ignored")
    assert sent == "Review: given"


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["run", "nope", "--var", "x=1"], "no task named 'nope'"),
        (["show", "nope"], "no task named 'nope'"),
        (["render", "sentiment", "--var", "reviw=x"], "unknown variable 'reviw'"),
        (["run", "sentiment", "--var", "reviw=x"], "unknown variable 'reviw'"),
        (["render", "sentiment"], "missing required variable 'review'"),
        (["run", "count"], "missing required variable 'n'"),
        (["render", "count", "--var", "n=abc"], "'abc' is not JSON, and variable 'n' is integer"),
        (["render", "count", "--var", "n=1.5"], "variable 'n' must be integer, got number"),
        (["render", "count", "--var", "n=NaN"], "'NaN' is not JSON"),
        (["render", "count", "--var", "n"], "--var 'n': write it as name=value"),
        (["render", "count", "--var", "=3"], "write it as name=value"),
        (["render", "count", "--vars-json", "{n: 1}"], "--vars-json is not valid JSON"),
        (["render", "count", "--vars-json", "[1]"], "--vars-json must be a JSON object"),
        (["render", "sentiment", "--var", "review=@missing.txt"], "cannot read 'missing.txt'"),
        (["render", "sentiment", "--var", "review=x", "--variant", "zz"], "no variant 'zz'"),
        (["render", "sentiment", "--var", "review=x", "--version", "7"], "no version 7"),
        (["render", "sentiment", "--var", "review=x", "--version", "beta"], "no label 'beta'"),
        (["label", "sentiment", "Prod", "1"], "label 'Prod' must start with a lowercase"),
        (["label", "sentiment", "staging"], "give a VERSION"),
        (["label", "sentiment", "staging", "1", "--delete"], "give a VERSION"),
        (["label", "sentiment", "staging", "9"], "no version 9"),
        (["label", "sentiment", "staging", "--delete"], "has no label 'staging'"),
        (["label", "nope", "staging", "1"], "no task named 'nope'"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(args: list[str], expected: str) -> None:
    assert expected in error_line("task", *args)


# -- labels ---------------------------------------------------------------------------------


def test_moving_a_label_rolls_back_and_show_reflects_it(tmp_path: Path) -> None:
    ok("task", "list")
    configure(tmp_path, user="The review: {{ review }}")
    assert ok_json("task", "show", "sentiment")["labels"]["production"] == 2

    result = ok("task", "label", "sentiment", "production", "1")
    assert result.stdout.strip() == "sentiment: production → version 1 (was 2)"
    detail = ok_json("task", "show", "sentiment")
    assert detail["labels"] == {"latest": 2, "production": 1}
    assert [v["labels"] for v in detail["versions"]] == [["production"], ["latest"]]
    assert {v["resolved_version"] for v in detail["variants"]} == {1}
    assert "production → 1" in ok("task", "show", "sentiment").stdout
    # Variants select "production", so a run now renders version 1's template.
    plan = ok_json("task", "render", "sentiment", "--var", "review=x", "--variant", "a")
    assert plan["version"] == 1 and plan["messages"][-1]["content"] == "Review: x"

    # A label can be pointed at another label's version, then removed.
    moved = ok_json("task", "label", "sentiment", "staging", "latest")
    assert moved == {"task": "sentiment", "label": "staging", "version": 2, "previous": None}
    assert ok_json("task", "list")[1]["labels"]["staging"] == 2
    result = ok("task", "label", "sentiment", "staging", "--delete")
    assert result.stdout.strip() == "sentiment: removed label staging (was → 2)"
    assert "staging" not in ok_json("task", "show", "sentiment")["labels"]

    # An unchanged config file does not move the label back.
    assert ok_json("task", "show", "sentiment")["labels"]["production"] == 1


# -- run (the real bundled model) -----------------------------------------------------------


@pytest.mark.model
def test_run_json_output_satisfies_the_schema_and_is_traced() -> None:
    out = ok_json(
        "task", "run", "sentiment", "--var", "review=I loved it, wonderful!", "--variant", "a"
    )
    assert set(out["output"]) == {"sentiment"}
    assert out["output"]["sentiment"] in ("positive", "negative")
    assert (out["task"], out["variant"], out["version"], out["model"]) == (
        "sentiment",
        "a",
        1,
        "smollm2",
    )
    usage = out["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert out["cost"] == 0 and out["attempts"] >= 1
    assert out["trace_id"].startswith("tr_")

    trace = ok_json("logs", "show", out["trace_id"])
    assert trace["task"] == "sentiment" and trace["variant"] == "a"
    assert trace["status"] == "ok" and trace["metadata"]["source"] == "cli"
    assert trace["metadata"]["task_version"] == 1
    assert trace["request"]["variables"] == {"review": "I loved it, wonderful!"}
    assert json.loads(trace["output"]) == out["output"]


@pytest.mark.model
def test_run_human_output_from_stdin() -> None:
    result = ok("task", "run", "sentiment", "--variant", "b", stdin="Terrible, it broke in a day.")
    output = json.loads(result.stdout)
    assert output["sentiment"] in ("positive", "negative") and set(output) == {"sentiment"}
    meta = result.stderr.strip()
    assert len(meta.splitlines()) == 1
    trace_id = meta.split()[1]
    assert trace_id.startswith("tr_")
    assert "variant b" in meta and "version 1" in meta and "smollm2" in meta
    assert "tokens" in meta and "$0" in meta

    trace = ok_json("logs", "show", trace_id)
    assert trace["request"]["variables"] == {"review": "Terrible, it broke in a day."}
    assert trace["variant"] == "b" and trace["metadata"]["examples"] == 0


@pytest.mark.model
def test_output_that_never_validates_is_one_line_with_its_trace(tmp_path: Path) -> None:
    write_config(
        tmp_path,
        """
[tasks.cut]
user = "Describe {{ thing }} in JSON."
variables = { thing = "string" }
params = { max_tokens = 2 }
repairs = 0
[tasks.cut.output]
schema = { type = "object", properties = { words = { type = "string" } }, required = ["words"] }
""",
    )
    line = error_line("task", "run", "cut", "--var", "thing=the sea")
    assert "gave no valid output in 1 attempt" in line
    trace_id = line.rsplit("(trace ", 1)[1].rstrip(")")
    trace = ok_json("logs", "show", trace_id)
    assert trace["status"] == "error" and trace["task"] == "cut"
    assert trace["error_message"] in line and len(trace["attempts"]) == 1
