"""The runner end to end against a fake OpenAI upstream: suite -> gateway -> stored run ->
CLI exit codes -> compare -> HTML report; resume after an interruption; user code off HTTP."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from powertrain import AsyncClient
from powertrain.cli import main
from powertrain.config import Config
from powertrain.evals import EvalRunner, SuiteError, load_suite, render_report
from powertrain.store.evals import EvalStore
from tests.conftest import config_from, openai_model_toml
from tests.fakes import FakeOpenAI
from tests.fakes.upstreams import RecordedRequest

SCHEMA = {
    "type": "object",
    "properties": {"sentiment": {"type": "string", "enum": ["positive", "negative"]}},
    "required": ["sentiment"],
    "additionalProperties": False,
}

TASK = f"""
[tasks.sentiment]
system = "Classify the sentiment."
user = "Review: {{{{ review }}}}"
variables = {{ review = "string" }}
model = "gpt"
repairs = 0
params = {{ temperature = 0 }}
[tasks.sentiment.output]
schema = '{json.dumps(SCHEMA)}'
[tasks.sentiment.variants.plain]
weight = 1
[tasks.sentiment.variants.other]
weight = 0
"""

CASES = [
    ("great film", "positive"),
    ("awful plot", "negative"),
    ("great cast", "positive"),
    ("bad <script>alert(1)</script>", "negative"),
    ("great music", "negative"),  # the fake says positive: a failure
    ("boring", "negative"),
]


def suite_yaml(extra: str = "", cases: list[tuple[str, str]] = CASES) -> str:
    rows = "\n".join(
        f"    - vars: {{review: {json.dumps(text)}}}\n      expected: {label}"
        for text, label in cases
    )
    return f"""
name: sentiment-check
concurrency: 2
timeout: 20
dataset:
  cases:
{rows}
targets:
  - task: sentiment
    variants: [plain, other]
assert:
  - type: json-path
    path: $.sentiment
{extra}
"""


def reply_for(request: RecordedRequest) -> str:
    messages = request.json["messages"]
    text = str(messages[-1]["content"])
    if "RUBRIC" in text:
        return "definitely good, 10/10"  # a judge that ignores the format
    if "review" in text.lower() or "Review:" in text:
        return json.dumps({"sentiment": "positive" if "great" in text else "negative"})
    return "plain answer about " + text


def make_config(tmp_path: Path, upstream: FakeOpenAI, database_url: str | None = None) -> Config:
    model = openai_model_toml("gpt", upstream.url, extra="price_input = 1.0\nprice_output = 2.0")
    settings = f'[settings]\ndatabase_url = "{database_url}"\n' if database_url else ""
    return config_from(tmp_path, settings + TASK + "\n" + model)


def write_suite(tmp_path: Path, text: str, name: str = "suite.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


async def test_run_stores_every_case_and_traces_every_call(
    tmp_path: Path, database_url: str
) -> None:
    """On SQLite and on Postgres (the store's per-dialect writes)."""
    async with FakeOpenAI(reply=reply_for) as upstream:
        loaded = load_suite(write_suite(tmp_path, suite_yaml()))
        async with AsyncClient(make_config(tmp_path, upstream, database_url)) as client:
            store = EvalStore(client.gateway.database)
            run = await EvalRunner(client.gateway, store).run(loaded)
            results = store.results(run.id)
            assert run.status == "finished" and len(results) == 12
            assert {r.target for r in results} == {"task:sentiment@plain", "task:sentiment@other"}
            failed = [r for r in results if r.status != "pass"]
            assert {r.case_idx for r in failed} == {4} and len(failed) == 2
            assert all(r.cost_usd > 0 and r.latency_ms > 0 for r in results)
            trace = await client.trace(results[0].trace_id or "")
            assert trace is not None and trace.metadata["source"] == f"eval:{run.id}"
            assert trace.variant in ("plain", "other")
        assert len(upstream.requests) == 12


async def test_model_target_with_a_prompt_and_an_unparseable_judge(tmp_path: Path) -> None:
    text = """
name: judged
dataset:
  cases: [{vars: {topic: tea}, expected: tea}]
targets:
  - model: gpt
    prompt: "Tell me about {{ topic }}"
assert:
  - type: icontains
    value: TEA
  - type: llm-judge
    rubric: Is it about the topic?
    model: gpt
"""
    async with FakeOpenAI(reply=reply_for) as upstream:
        loaded = load_suite(write_suite(tmp_path, text))
        async with AsyncClient(make_config(tmp_path, upstream)) as client:
            store = EvalStore(client.gateway.database)
            run = await EvalRunner(client.gateway, store).run(loaded)
            [result] = store.results(run.id)
        assert upstream.requests[0].json["messages"][-1]["content"] == "Tell me about tea"
    assert result.output == "plain answer about Tell me about tea"
    contains, judge = result.assertions
    assert contains["status"] == "pass"
    assert judge["status"] == "error" and "no JSON object" in judge["detail"]
    assert judge["judge_reply"] == "definitely good, 10/10" and "RUBRIC" in judge["judge_prompt"]
    assert result.status == "error"  # never a pass


async def test_unknown_task_variant_or_model_is_refused_before_running(tmp_path: Path) -> None:
    async with FakeOpenAI(reply=reply_for) as upstream:
        async with AsyncClient(make_config(tmp_path, upstream)) as client:
            runner = EvalRunner(client.gateway, EvalStore(client.gateway.database))
            bad_variant = suite_yaml().replace("[plain, other]", "[plain, nope]")
            with pytest.raises(
                SuiteError, match=r"targets\[0\]: task 'sentiment' has no variant 'nope'"
            ):
                await runner.open_run(load_suite(write_suite(tmp_path, bad_variant)))
            bad_model = suite_yaml().replace(
                "- task: sentiment\n    variants: [plain, other]", "- model: ghost\n    prompt: hi"
            )
            with pytest.raises(
                SuiteError, match=r"targets\[0\]: model 'ghost' is not in the catalog"
            ):
                await runner.open_run(load_suite(write_suite(tmp_path, bad_model)))
        assert not upstream.requests


async def test_resume_after_interruption_runs_no_case_twice(tmp_path: Path) -> None:
    cases = [
        (f"great {i}" if i % 2 else f"meh {i}", "positive" if i % 2 else "negative")
        for i in range(10)
    ]
    async with FakeOpenAI(reply=reply_for) as upstream:
        upstream.latency = 0.05
        loaded = load_suite(write_suite(tmp_path, suite_yaml(cases=cases)))
        async with AsyncClient(make_config(tmp_path, upstream)) as client:
            store = EvalStore(client.gateway.database)
            runner = EvalRunner(client.gateway, store)
            stored: list[str] = []
            job = asyncio.create_task(
                runner.run(loaded, on_result=lambda r: stored.append(r.target))
            )
            while len(stored) < 7:
                await asyncio.sleep(0.01)
            job.cancel()
            with pytest.raises(asyncio.CancelledError):
                await job
            [run] = store.list_runs()
            assert run.status == "running"
            first = {r.key: r.trace_id for r in store.results(run.id)}
            assert 7 <= len(first) < 20
            await asyncio.sleep(0.2)  # a request sent as the run was cancelled lands first
            await upstream.wait_idle()
            requests_before = len(upstream.requests)

            resumed = await runner.run(loaded)  # the unfinished run of the same suite
            assert resumed.id == run.id and resumed.status == "finished"
            results = store.results(run.id)
            assert len(results) == 20 and len({r.key for r in results}) == 20
            assert {r.key: r.trace_id for r in results if r.key in first} == first
            # Only the missing ones ran again (cancelled in-flight ones had not been stored).
            assert len(upstream.requests) - requests_before == 20 - len(first)
            assert all(r.status == "pass" for r in results)

            again = await runner.run(loaded)  # finished: a new run, from scratch
            assert again.id != run.id and len(store.results(again.id)) == 20


def run_cli(args: list[str]) -> Any:
    return CliRunner().invoke(main, args, catch_exceptions=False)


async def _cli_flow(tmp_path: Path) -> None:
    async with FakeOpenAI(reply=reply_for) as upstream:
        make_config(tmp_path, upstream)
        suite = write_suite(tmp_path, suite_yaml())

        def gate(*extra: str) -> Any:
            return run_cli(["eval", "run", str(suite), "--new", *extra])

        # 10 of 12 pass: 0.833.
        passing = await asyncio.to_thread(gate, "--fail-under", "0.8", "--json")
        assert passing.exit_code == 0, passing.output
        body = json.loads(passing.output)
        assert body["pass_rate"] == pytest.approx(10 / 12) and body["results"] == 12
        run_a = body["run"]
        failing = await asyncio.to_thread(gate, "--fail-under", "0.9", "--report", "r.html")
        assert failing.exit_code == 1
        assert "task:sentiment@plain" in failing.output and "83.3%" in failing.output
        assert "below --fail-under" in failing.output
        html = (tmp_path / "r.html").read_text()
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>" not in html

        bad = write_suite(tmp_path, "name: x\n", "bad.yaml")
        broken = await asyncio.to_thread(run_cli, ["eval", "run", str(bad)])
        assert broken.exit_code == 2 and "dataset: Field required" in broken.output
        assert len(broken.output.strip().splitlines()) == 1

        # Run B: the model now gets case 0 wrong and case 4 right.
        def flipped(request: RecordedRequest) -> str:
            text = request.json["messages"][-1]["content"]
            if "great film" in text or "great music" in text:
                return json.dumps({"sentiment": "negative"})
            return reply_for(request)

        upstream.reply = flipped
        second = json.loads((await asyncio.to_thread(gate, "--json")).output)
        run_b = second["run"]
        compared = await asyncio.to_thread(run_cli, ["eval", "compare", run_a, run_b, "--json"])
        diff = json.loads(compared.output)
        changes = [(c["change"], c["case_idx"]) for c in diff["cases"]]
        assert changes[:2] == [("regression", 0), ("regression", 0)]
        assert set(changes[2:]) == {("improvement", 4)} and len(changes) == 4
        assert diff["regressions"] == 2 and diff["improvements"] == 2
        table = await asyncio.to_thread(run_cli, ["eval", "compare", run_a, run_b])
        assert table.output.index("regression") < table.output.index("improvement")

        listed = json.loads((await asyncio.to_thread(run_cli, ["eval", "list", "--json"])).output)
        assert len(listed) == 3 and listed[0]["run"] == run_b and listed[-1]["run"] == run_a
        shown = await asyncio.to_thread(run_cli, ["eval", "show", run_a])
        assert shown.exit_code == 0 and "failed cases" in shown.output
        report = await asyncio.to_thread(run_cli, ["eval", "report", run_a, run_b, "-o", "ab.html"])
        assert report.exit_code == 0
        both = (tmp_path / "ab.html").read_text()
        assert "regression" in both and "<svg" in both and "<script>" not in both
        missing = await asyncio.to_thread(run_cli, ["eval", "show", "ev_nope"])
        assert missing.exit_code == 1 and "no eval run" in missing.output
        unknown = await asyncio.to_thread(gate, "--resume", "ev_nope")
        assert unknown.exit_code == 2 and "no eval run 'ev_nope'" in unknown.output
        other = write_suite(tmp_path, suite_yaml(cases=CASES[:2]), "other.yaml")
        mismatch = await asyncio.to_thread(run_cli, ["eval", "run", str(other), "--resume", run_a])
        assert mismatch.exit_code == 2 and "different suite" in mismatch.output


async def test_cli_gate_compare_and_report(tmp_path: Path) -> None:
    await _cli_flow(tmp_path)


def test_report_escapes_every_text(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from powertrain.store.evals import EvalResultRecord, EvalRunRecord

    evil = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    run = EvalRunRecord(
        id="ev_1",
        suite=evil,
        suite_hash="h",
        suite_path=None,
        status="finished",
        config={"targets": [evil]},
        created_at=datetime.now(UTC),
        finished_at=None,
    )
    result = EvalResultRecord(
        run_id="ev_1",
        case_idx=0,
        target=evil,
        rep=0,
        case_key="k",
        vars={"q": evil},
        expected=evil,
        status="fail",
        score=0.0,
        output=evil,
        error=None,
        latency_ms=1.0,
        cost_usd=0.0,
        trace_id=None,
        assertions=[{"type": "equals", "status": "fail", "detail": evil}],
    )
    html = render_report(run, [result], (run, [result]))
    assert "<script" not in html and "<img" not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html
    assert "default-src 'none'" in html


def test_python_assertions_are_reachable_only_from_the_cli() -> None:
    """No server route may load a suite with user code: only cli/eval.py passes
    allow_python=True, and the runner refuses python checks without it."""
    root = Path(__file__).resolve().parent.parent / "powertrain"
    callers = [
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if re.search(r"allow_python\s*=\s*True", p.read_text(encoding="utf-8"))
    ]
    assert callers == ["cli/eval.py"]
    server = "\n".join(p.read_text(encoding="utf-8") for p in (root / "server").rglob("*.py"))
    assert "powertrain.evals" not in server and "EvalRunner" not in server


async def test_runner_off_the_cli_refuses_python_checks(tmp_path: Path) -> None:
    (tmp_path / "checks.py").write_text("def ok(output, context):\n    return True\n")
    text = suite_yaml("  - python: checks.py:ok")
    async with FakeOpenAI(reply=reply_for) as upstream:
        loaded = load_suite(write_suite(tmp_path, text))
        async with AsyncClient(make_config(tmp_path, upstream)) as client:
            runner = EvalRunner(client.gateway, EvalStore(client.gateway.database))
            with pytest.raises(SuiteError, match="only allowed from the `powertrain eval`"):
                await runner.run(loaded)
        assert not upstream.requests


@pytest.mark.parametrize(("cache", "calls"), [(False, 4), (True, 2)])
async def test_repeats_call_the_model_unless_the_suite_uses_the_cache(
    tmp_path: Path, cache: bool, calls: int
) -> None:
    text = suite_yaml(f"repeat: 2\ncache: {str(cache).lower()}\nconcurrency: 1", cases=CASES[:1])
    text = text.replace("concurrency: 2\n", "", 1)
    async with FakeOpenAI(reply=reply_for) as upstream:
        loaded = load_suite(write_suite(tmp_path, text))
        async with AsyncClient(make_config(tmp_path, upstream)) as client:
            store = EvalStore(client.gateway.database)
            run = await EvalRunner(client.gateway, store).run(loaded)
            assert len(store.results(run.id)) == 4
        assert len(upstream.requests) == calls


async def test_a_stored_dataset_version_as_the_cases(tmp_path: Path) -> None:
    rows = [{"input": {"variables": {"review": t}}, "output": label} for t, label in CASES[:3]]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = suite_yaml(cases=CASES[:1]).replace(
        "dataset:\n  cases:\n", "dataset: reviews@1\nunused:\n  cases:\n"
    )
    text = text[: text.index("unused:")] + text[text.index("targets:") :]
    suite = write_suite(tmp_path, text)
    async with FakeOpenAI(reply=reply_for) as upstream:
        make_config(tmp_path, upstream)
        made = await asyncio.to_thread(
            run_cli, ["dataset", "create", "reviews", "--from-file", "rows.jsonl"]
        )
        assert made.exit_code == 0, made.output
        result = await asyncio.to_thread(run_cli, ["eval", "run", str(suite), "--json"])
        assert result.exit_code == 0, result.output
        body = json.loads(result.output)
        assert body["results"] == 6 and body["pass_rate"] == 1.0
        missing = write_suite(tmp_path, text.replace("reviews@1", "reviews@9"), "m.yaml")
        gone = await asyncio.to_thread(run_cli, ["eval", "run", str(missing)])
        assert gone.exit_code == 2 and "dataset:" in gone.output
