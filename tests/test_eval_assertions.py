"""Each assertion's semantics, the judge's parsing, weighted scores and user-code loading."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from powertrain.evals import Outcome, SuiteError, bind_assertions, score_case
from powertrain.evals.assertions import AssertionType, CheckInput, Verdict, assertion_types
from powertrain.evals.jsonpath import MISSING, JsonPathError, compile_path, resolve
from powertrain.evals.judge import JudgeUnparseable, parse_verdict
from powertrain.evals.suite import AssertionSpec, Case
from powertrain.plugins import hookimpl, plugin_manager


class FakeServices:
    def __init__(self, *, judge_reply: str = "", chunks: list[dict[str, Any]] | None = None):
        self.judge_reply = judge_reply
        self.chunks = chunks
        self.judged: list[str] = []

    async def embed(self, model: str, texts: list[str]) -> list[list[float]]:
        # Same text, same vector; different texts orthogonal.
        return [[1.0, 0.0] if t == texts[0] else [0.0, 1.0] for t in texts]

    async def judge(self, model: str | None, system: str, prompt: str) -> tuple[str, str]:
        self.judged.append(prompt)
        return self.judge_reply, "tr_judge"

    async def retrieved(self, trace_id: str) -> list[dict[str, Any]] | None:
        return self.chunks


async def check(
    spec: dict[str, Any],
    text: str,
    *,
    value: Any = None,
    expected: Any = None,
    services: FakeServices | None = None,
    tmp_path: Path | None = None,
    allow_python: bool = False,
    **outcome: Any,
) -> Verdict:
    [bound] = bind_assertions(
        [AssertionSpec.model_validate(spec)],
        base_dir=tmp_path or Path("."),
        allow_python=allow_python,
    )
    case = Case(0, {"q": "question"}, expected)
    result = Outcome(text, value, trace_id="tr_x", **outcome)
    return await bound.check(CheckInput(bound.spec, case, result, services or FakeServices()))


async def test_equals_text_and_json_value() -> None:
    assert (await check({"type": "equals", "value": "Paris"}, " Paris\n")).status == "pass"
    assert (await check({"type": "equals"}, "Lyon", expected="Paris")).status == "fail"
    assert (await check({"type": "equals", "value": {"a": 1}}, '{"a": 1}')).status == "pass"
    assert (
        await check({"type": "equals", "value": {"a": 1}}, "x", value={"a": 1})
    ).status == "pass"


async def test_contains_icontains_regex_one_of() -> None:
    assert (await check({"type": "contains", "value": "Par"}, "Paris")).status == "pass"
    assert (await check({"type": "contains", "value": "par"}, "Paris")).status == "fail"
    assert (await check({"type": "icontains", "value": "PAR"}, "Paris")).status == "pass"
    assert (await check({"type": "regex", "value": r"^\d{3}$"}, "123")).status == "pass"
    assert (await check({"type": "regex", "value": r"^\d{3}$"}, "12a")).status == "fail"
    assert (await check({"type": "one-of", "values": ["a", "b"]}, "b")).status == "pass"
    assert (await check({"type": "one-of", "values": ["a", "b"]}, "c")).status == "fail"


async def test_json_checks() -> None:
    schema = {
        "type": "object",
        "required": ["intent"],
        "properties": {"intent": {"type": "string"}},
    }
    assert (await check({"type": "is-json"}, '{"a": [1]}')).status == "pass"
    assert (await check({"type": "is-json"}, "{nope")).status == "fail"
    assert (
        await check({"type": "json-schema", "value": schema}, '{"intent": "x"}')
    ).status == "pass"
    failed = await check({"type": "json-schema", "value": schema}, '{"intent": 3}')
    assert failed.status == "fail" and "intent" in failed.detail
    spec = {"type": "json-path", "path": "$.items[1].name"}
    text = '{"items": [{"name": "a"}, {"name": "b"}]}'
    assert (await check({**spec, "value": "b"}, text)).status == "pass"
    assert (await check(spec, text, expected="a")).status == "fail"
    assert (
        await check(
            {"type": "json-path", "path": "$.intent"},
            "x",
            value={"intent": "card"},
            expected="card",
        )
    ).status == "pass"
    assert (await check({"type": "json-path", "path": "$.missing"}, "{}")).status == "fail"


def test_json_path_subset() -> None:
    assert compile_path("$.a['b c'][0][-1]") == ["a", "b c", 0, -1]
    assert resolve({"a": [1, 2]}, compile_path("$.a[-1]")) == 2
    assert resolve({"a": [1]}, compile_path("$.a[5]")) is MISSING
    with pytest.raises(JsonPathError):
        compile_path("$..a")
    with pytest.raises(JsonPathError):
        compile_path("a.b")


async def test_bounds_latency_cost_length() -> None:
    assert (await check({"type": "length", "max": 5}, "abcdef")).status == "fail"
    assert (await check({"type": "length", "min": 2, "max": 6}, "abcdef")).status == "pass"
    assert (await check({"type": "latency", "max": 100}, "x", latency_ms=50.0)).status == "pass"
    assert (await check({"type": "latency", "max": 100}, "x", latency_ms=150.0)).status == "fail"
    assert (await check({"type": "cost", "max": 0.01}, "x", cost_usd=0.02)).status == "fail"


async def test_similarity_through_the_embedder() -> None:
    same = await check({"type": "similar", "value": "hello", "threshold": 0.9}, "hello")
    assert same.status == "pass" and same.score == pytest.approx(1.0)
    different = await check({"type": "similar", "value": "bye", "threshold": 0.9}, "hello")
    assert different.status == "fail"


async def test_judge_keeps_prompt_reasoning_and_score() -> None:
    services = FakeServices(judge_reply='Sure! {"reasoning": "polite and right", "score": 0.8}')
    verdict = await check(
        {"type": "llm-judge", "rubric": "Is it polite?"}, "Thank you!", services=services
    )
    assert verdict.status == "pass" and verdict.score == 0.8
    assert verdict.extra["reasoning"] == "polite and right"
    assert "Is it polite?" in verdict.extra["judge_prompt"] and "Thank you!" in services.judged[0]
    assert verdict.extra["judge_trace_id"] == "tr_judge"


@pytest.mark.parametrize(
    "reply",
    [
        "I think it is great!",
        '{"reasoning": "ok"}',
        '{"score": 7}',
        '{"score": "high"}',
        "{bad json}",
    ],
)
async def test_unparseable_judge_reply_is_an_error_never_a_pass(reply: str) -> None:
    verdict = await check(
        {"type": "llm-judge", "rubric": "r"}, "out", services=FakeServices(judge_reply=reply)
    )
    assert verdict.status == "error" and verdict.score == 0.0
    assert verdict.extra["judge_reply"] == reply
    status, _ = score_case([verdict], threshold=0.0)
    assert status == "error"


def test_parse_verdict_accepts_pass_bool() -> None:
    assert parse_verdict('{"pass": true, "reasoning": "fine"}').score == 1.0
    with pytest.raises(JudgeUnparseable):
        parse_verdict("[]")


async def test_rag_citations_and_context_recall() -> None:
    chunks = [{"id": 11, "path": "a.md"}, {"id": 12, "path": "b.md"}]
    services = FakeServices(chunks=chunks)
    cited = await check({"type": "cites-sources"}, "Yes [1][2].", services=services)
    assert cited.status == "pass"
    wrong = await check({"type": "cites-sources"}, "Yes [3].", services=services)
    assert wrong.status == "fail" and wrong.score == 0.0
    none = await check({"type": "cites-sources"}, "Yes.", services=services)
    assert none.status == "fail"
    unretrieved = await check({"type": "cites-sources"}, "Yes [1].", services=FakeServices())
    assert unretrieved.status == "fail"
    recall = await check(
        {"type": "context-recall", "values": ["a.md", "c.md"]}, "x", services=services
    )
    assert recall.status == "fail" and recall.score == 0.5
    full = await check(
        {"type": "context-recall", "threshold": 0.5}, "x", expected=["b.md"], services=services
    )
    assert full.status == "pass"


def test_weighted_scores_and_thresholds() -> None:
    a = Verdict("x", "pass", 1.0, weight=3)
    b = Verdict("y", "fail", 0.0, weight=1)
    assert score_case([a, b], threshold=None) == ("fail", 0.75)
    assert score_case([a, b], threshold=0.7) == ("pass", 0.75)
    assert score_case([a, b], threshold=0.8) == ("fail", 0.75)


def test_bad_parameters_are_suite_errors() -> None:
    for spec, words in [
        ({"type": "nope"}, "unknown assertion type 'nope'"),
        ({"type": "regex", "value": "("}, "does not compile"),
        ({"type": "json-path"}, "needs path"),
        ({"type": "length"}, "needs min or max"),
        ({"type": "llm-judge"}, "needs rubric"),
        ({"type": "json-schema", "value": {"type": 5}}, "not a valid schema"),
    ]:
        with pytest.raises(SuiteError, match=words) as info:
            bind_assertions([AssertionSpec.model_validate(spec)], base_dir=Path("."))
        assert "assert[0]" in str(info.value) and "\n" not in str(info.value)


def _write_checks(tmp_path: Path) -> None:
    (tmp_path / "checks.py").write_text(
        "def short(output, context):\n"
        "    return {'pass': len(output) < 5, 'score': 0.5, 'reason': context['vars']['q']}\n"
        "def boom(output, context):\n"
        "    raise RuntimeError('bad')\n",
        encoding="utf-8",
    )


async def test_python_checks_run_only_when_allowed(tmp_path: Path) -> None:
    _write_checks(tmp_path)
    spec = {"python": "checks.py:short"}
    with pytest.raises(SuiteError, match="only allowed from the `powertrain eval` command line"):
        await check(spec, "hi", tmp_path=tmp_path)
    verdict = await check(spec, "hi", tmp_path=tmp_path, allow_python=True)
    assert verdict.status == "pass" and verdict.detail == "question"
    crashed = await check({"python": "checks.py:boom"}, "hi", tmp_path=tmp_path, allow_python=True)
    assert crashed.status == "error" and "RuntimeError" in crashed.detail
    for ref in ("../checks.py:short", "/etc/passwd:x", "checks.py:nope", "checks.txt:short"):
        with pytest.raises(SuiteError):
            await check({"python": ref}, "hi", tmp_path=tmp_path, allow_python=True)


class AlwaysPlugin:
    @hookimpl
    def register_assertions(self, register: Callable[[AssertionType], None]) -> None:
        async def always(inp: CheckInput) -> Verdict:
            return Verdict("always", "pass", 1.0, inp.spec.weight, "plugin")

        register(AssertionType("always", always))


async def test_a_plugin_adds_an_assertion_type() -> None:
    pm = plugin_manager()
    plugin = AlwaysPlugin()
    pm.register(plugin, name="always-test-plugin")
    try:
        assert {"always", "equals", "llm-judge"} <= set(assertion_types())
        verdict = await check({"type": "always"}, "anything")
        assert verdict.status == "pass" and verdict.detail == "plugin"
    finally:
        pm.unregister(plugin)
    with pytest.raises(SuiteError, match="unknown assertion type 'always'"):
        await check({"type": "always"}, "anything")
