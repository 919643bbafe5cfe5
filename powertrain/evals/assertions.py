"""Assertions: each checks one output of one case and gives a score in [0, 1].

Built-in checks are registered by name in ``ASSERTIONS`` (``register_assertion``
adds one). A suite's ``assert`` list is bound once, before any case runs, so a
bad parameter is a suite error, not a thousand failed cases. User Python
checks (``python: checks.py:fn``) load only when the caller passes
the allow_python flag, which only the CLI sets: nothing reachable over HTTP can
run a file from disk.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from powertrain.errors import ConfigError, PowertrainError
from powertrain.evals.jsonpath import MISSING, JsonPathError, compile_path, resolve
from powertrain.evals.judge import JUDGE_SYSTEM, JudgeUnparseable, judge_prompt, parse_verdict
from powertrain.evals.suite import AssertionSpec, Case, SuiteError
from powertrain.plugins import hookimpl, plugin_manager
from powertrain.rag.loaders import safe_relative_path

_CITATION = re.compile(r"\[(\d{1,3})\]")


@dataclass
class Outcome:
    """What a target produced for a case."""

    text: str
    value: Any = None  # the task's validated JSON output (None for text)
    latency_ms: float = 0.0
    cost_usd: float = 0.0
    trace_id: str | None = None

    def json_value(self) -> Any:
        """The output as JSON: the task's parsed output, else the text parsed (or MISSING)."""
        if self.value is not None:
            return self.value
        try:
            return json.loads(self.text)
        except (ValueError, TypeError):
            return MISSING


class Services(Protocol):
    """What the model-backed checks need from the gateway (the runner provides it)."""

    async def embed(self, model: str, texts: list[str]) -> list[list[float]]: ...

    async def judge(self, model: str | None, system: str, prompt: str) -> tuple[str, str]:
        """The judge's reply and its trace id."""
        ...

    async def retrieved(self, trace_id: str) -> list[dict[str, Any]] | None:
        """The chunks (id, path, score) the traced call retrieved; None if it retrieved none."""
        ...


@dataclass
class Verdict:
    type: str
    status: str  # pass | fail | error
    score: float
    weight: float = 1.0
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = {
            "type": self.type,
            "status": self.status,
            "score": self.score,
            "weight": self.weight,
            "detail": self.detail,
        }
        return {**out, **self.extra} if self.extra else out


@dataclass(frozen=True)
class CheckInput:
    spec: AssertionSpec
    case: Case
    outcome: Outcome
    services: Services

    @property
    def expected(self) -> Any:
        return self.spec.value if self.spec.value is not None else self.case.expected


CheckFn = Callable[[CheckInput], Awaitable[Verdict]]
Validator = Callable[[AssertionSpec, str], None]


@dataclass(frozen=True)
class AssertionType:
    name: str
    check: CheckFn
    validate: Validator | None = None


# The built-in types; they reach suites through the plugin hook like a plugin's do.
ASSERTIONS: dict[str, AssertionType] = {}


def register_assertion(
    name: str, *, validate: Validator | None = None
) -> Callable[[CheckFn], CheckFn]:
    """Decorate a built-in check (plugins register theirs through ``register_assertions``)."""

    def add(fn: CheckFn) -> CheckFn:
        ASSERTIONS[name] = AssertionType(name, fn, validate)
        return fn

    return add


@hookimpl
def register_assertions(register: Callable[[AssertionType], None]) -> None:
    for kind in ASSERTIONS.values():
        register(kind)


def assertion_types() -> dict[str, AssertionType]:
    """Every registered assertion type by name, built-ins and plugins alike."""
    found: dict[str, AssertionType] = {}

    def register(kind: AssertionType) -> None:
        if kind.name == "python" or (kind.name in found and found[kind.name] != kind):
            raise ConfigError(f"two plugins register an assertion type named {kind.name!r}")
        found[kind.name] = kind

    plugin_manager().hook.register_assertions(register=register)
    return found


def _verdict(inp: CheckInput, ok: bool, detail: str = "", score: float | None = None) -> Verdict:
    value = (1.0 if ok else 0.0) if score is None else score
    return Verdict(inp.spec.type, "pass" if ok else "fail", value, inp.spec.weight, detail)


def _error(inp: CheckInput, detail: str, **extra: Any) -> Verdict:
    return Verdict(inp.spec.type, "error", 0.0, inp.spec.weight, detail, extra)


def _needs(*names: str) -> Validator:
    def validate(spec: AssertionSpec, where: str) -> None:
        for name in names:
            if getattr(spec, name) is None:
                raise SuiteError(f"{where}: {spec.type} needs {name}")

    return validate


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


# -- text ---------------------------------------------------------------------------------


@register_assertion("equals")
async def _equals(inp: CheckInput) -> Verdict:
    expected = inp.expected
    if isinstance(expected, str):
        ok = inp.outcome.text.strip() == expected.strip()
    else:
        ok = inp.outcome.json_value() == expected
    return _verdict(inp, ok, "" if ok else f"expected {_short(expected)}")


@register_assertion("contains")
async def _contains(inp: CheckInput) -> Verdict:
    ok = str(inp.expected) in inp.outcome.text
    return _verdict(inp, ok, "" if ok else f"no {_short(inp.expected)}")


@register_assertion("icontains")
async def _icontains(inp: CheckInput) -> Verdict:
    ok = str(inp.expected).casefold() in inp.outcome.text.casefold()
    return _verdict(inp, ok, "" if ok else f"no {_short(inp.expected)} (any case)")


def _validate_regex(spec: AssertionSpec, where: str) -> None:
    if not isinstance(spec.value, str):
        raise SuiteError(f"{where}: regex needs value (a pattern)")
    try:
        re.compile(spec.value)
    except re.error as exc:
        raise SuiteError(f"{where}: regex {spec.value!r} does not compile: {exc}") from None


@register_assertion("regex", validate=_validate_regex)
async def _regex(inp: CheckInput) -> Verdict:
    ok = re.search(str(inp.spec.value), inp.outcome.text) is not None
    return _verdict(inp, ok, "" if ok else f"no match for {inp.spec.value!r}")


def _validate_one_of(spec: AssertionSpec, where: str) -> None:
    if not spec.values:
        raise SuiteError(f"{where}: one-of needs values (a list)")


@register_assertion("one-of", validate=_validate_one_of)
async def _one_of(inp: CheckInput) -> Verdict:
    values = inp.spec.values or []
    text = inp.outcome.text.strip()
    value = inp.outcome.json_value()
    ok = any((v == text) if isinstance(v, str) else (v == value) for v in values)
    return _verdict(inp, ok, "" if ok else f"not one of {len(values)} values")


def _validate_bounds(spec: AssertionSpec, where: str) -> None:
    if spec.min is None and spec.max is None:
        raise SuiteError(f"{where}: {spec.type} needs min or max")


def _within(inp: CheckInput, measured: float, unit: str) -> Verdict:
    low, high = inp.spec.min, inp.spec.max
    ok = (low is None or measured >= low) and (high is None or measured <= high)
    bounds = f"[{'' if low is None else f'{low:g}'}, {'' if high is None else f'{high:g}'}]"
    return _verdict(inp, ok, f"{measured:g} {unit} {'within' if ok else 'outside'} {bounds}")


@register_assertion("length", validate=_validate_bounds)
async def _length(inp: CheckInput) -> Verdict:
    return _within(inp, len(inp.outcome.text), "chars")


@register_assertion("latency", validate=_validate_bounds)
async def _latency(inp: CheckInput) -> Verdict:
    return _within(inp, round(inp.outcome.latency_ms, 1), "ms")


@register_assertion("cost", validate=_validate_bounds)
async def _cost(inp: CheckInput) -> Verdict:
    return _within(inp, inp.outcome.cost_usd, "USD")


# -- JSON ---------------------------------------------------------------------------------


@register_assertion("is-json")
async def _is_json(inp: CheckInput) -> Verdict:
    ok = inp.outcome.json_value() is not MISSING
    return _verdict(inp, ok, "" if ok else "not JSON")


def _validate_schema(spec: AssertionSpec, where: str) -> None:
    if not isinstance(spec.value, dict):
        raise SuiteError(f"{where}: json-schema needs value (a JSON Schema object)")
    try:
        Draft202012Validator.check_schema(spec.value)
    except SchemaError as exc:
        raise SuiteError(f"{where}: json-schema is not a valid schema: {exc.message}") from None


@register_assertion("json-schema", validate=_validate_schema)
async def _json_schema(inp: CheckInput) -> Verdict:
    value = inp.outcome.json_value()
    if value is MISSING:
        return _verdict(inp, False, "not JSON")
    error = next(iter(Draft202012Validator(inp.spec.value).iter_errors(value)), None)
    if error is None:
        return _verdict(inp, True)
    at = "/".join(str(p) for p in error.absolute_path) or "(root)"
    return _verdict(inp, False, f"{at}: {error.message[:160]}")


def _validate_path(spec: AssertionSpec, where: str) -> None:
    if spec.path is None:
        raise SuiteError(f"{where}: json-path needs path (like $.intent)")
    try:
        compile_path(spec.path)
    except JsonPathError as exc:
        raise SuiteError(f"{where}: {exc}") from None


@register_assertion("json-path", validate=_validate_path)
async def _json_path(inp: CheckInput) -> Verdict:
    value = inp.outcome.json_value()
    assert inp.spec.path is not None
    found = MISSING if value is MISSING else resolve(value, compile_path(inp.spec.path))
    if found is MISSING:
        return _verdict(inp, False, f"{inp.spec.path} not found")
    expected = inp.expected
    ok = expected is None or found == expected
    return _verdict(inp, ok, "" if ok else f"{_short(found)} != {_short(expected)}")


# -- models -------------------------------------------------------------------------------


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 0.0


@register_assertion("similar")
async def _similar(inp: CheckInput) -> Verdict:
    reference = inp.expected
    if reference is None:
        return _error(inp, "no reference text (value or the case's expected)")
    threshold = inp.spec.threshold if inp.spec.threshold is not None else 0.8
    try:
        a, b = await inp.services.embed(
            inp.spec.model or "minilm", [inp.outcome.text, str(reference)]
        )
    except PowertrainError as exc:
        return _error(inp, f"embedding failed: {exc.message}")
    similarity = _cosine(a, b)
    ok = similarity >= threshold
    return Verdict(
        "similar",
        "pass" if ok else "fail",
        max(0.0, min(1.0, similarity)),
        inp.spec.weight,
        f"similarity {similarity:.3f} {'>=' if ok else '<'} {threshold:g}",
    )


@register_assertion("llm-judge", validate=_needs("rubric"))
async def _llm_judge(inp: CheckInput) -> Verdict:
    assert inp.spec.rubric is not None
    prompt = judge_prompt(
        inp.spec.rubric,
        output=inp.outcome.text,
        variables=inp.case.vars,
        expected=inp.case.expected,
    )
    threshold = inp.spec.threshold if inp.spec.threshold is not None else 0.5
    try:
        reply, trace_id = await inp.services.judge(inp.spec.model, JUDGE_SYSTEM, prompt)
    except PowertrainError as exc:
        return _error(inp, f"the judge failed: {exc.message}", judge_prompt=prompt)
    extra = {"judge_prompt": prompt, "judge_reply": reply, "judge_trace_id": trace_id}
    try:
        verdict = parse_verdict(reply)
    except JudgeUnparseable as exc:
        return _error(inp, str(exc), **extra)
    ok = verdict.score >= threshold
    return Verdict(
        "llm-judge",
        "pass" if ok else "fail",
        verdict.score,
        inp.spec.weight,
        verdict.reasoning[:300],
        {**extra, "reasoning": verdict.reasoning},
    )


# -- RAG ----------------------------------------------------------------------------------


@register_assertion("cites-sources")
async def _cites_sources(inp: CheckInput) -> Verdict:
    """Every ``[n]`` in the answer names a chunk the call retrieved, and there is one."""
    chunks = await inp.services.retrieved(inp.outcome.trace_id) if inp.outcome.trace_id else None
    if not chunks:
        return _verdict(inp, False, "the call retrieved no sources")
    cited = [int(n) for n in _CITATION.findall(inp.outcome.text)]
    if not cited:
        return _verdict(inp, False, f"no [n] citation of the {len(chunks)} sources")
    valid = [n for n in cited if 1 <= n <= len(chunks)]
    ok = len(valid) == len(cited)
    detail = f"{len(valid)}/{len(cited)} citations name a retrieved source"
    return _verdict(inp, ok, detail, score=len(valid) / len(cited))


@register_assertion("context-recall")
async def _context_recall(inp: CheckInput) -> Verdict:
    """The share of reference sources (document paths or chunk ids) the call retrieved."""
    reference = inp.spec.values if inp.spec.values is not None else inp.expected
    if isinstance(reference, str | int):
        reference = [reference]
    if not isinstance(reference, list) or not reference:
        return _error(inp, "no reference sources (values, value or the case's expected)")
    chunks = await inp.services.retrieved(inp.outcome.trace_id) if inp.outcome.trace_id else None
    got = {str(c.get("path")) for c in chunks or []} | {str(c.get("id")) for c in chunks or []}
    hits = [r for r in reference if str(r) in got]
    recall = len(hits) / len(reference)
    threshold = inp.spec.threshold if inp.spec.threshold is not None else 1.0
    ok = recall >= threshold
    return _verdict(inp, ok, f"recall {len(hits)}/{len(reference)}", score=recall)


# -- user code ----------------------------------------------------------------------------


def load_python_check(
    ref: str, *, base_dir: Path, allow_python: bool, where: str
) -> Callable[..., Any]:
    """``file.py:function`` relative to the suite's directory, imported and returned."""
    if not allow_python:
        raise SuiteError(
            f"{where}: python assertions run local code and are only allowed from the "
            "`powertrain eval` command line"
        )
    file, _, name = ref.rpartition(":")
    if not file or not name.isidentifier():
        raise SuiteError(f"{where}: python needs FILE.py:FUNCTION, got {ref!r}")
    try:
        relative = safe_relative_path(file)
    except PowertrainError as exc:
        raise SuiteError(f"{where}: {exc.message}") from None
    root = base_dir.resolve()
    path = (root / relative).resolve()
    if path.suffix != ".py" or not path.is_relative_to(root) or not path.is_file():
        raise SuiteError(f"{where}: {file!r} is not a .py file in the suite's directory")
    spec = importlib.util.spec_from_file_location(f"powertrain_eval_checks_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise SuiteError(f"{where}: importing {file} failed: {type(exc).__name__}: {exc}") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise SuiteError(f"{where}: {file} has no function {name!r}")
    return fn  # type: ignore[no-any-return]


def _python_check(fn: Callable[..., Any]) -> CheckFn:
    """A user function ``fn(output, context)`` returning a bool, a score in [0, 1], or a
    dict ``{"pass": bool, "score": float, "reason": str}``."""

    async def check(inp: CheckInput) -> Verdict:
        context = {
            "vars": inp.case.vars,
            "expected": inp.case.expected,
            "value": None if inp.outcome.json_value() is MISSING else inp.outcome.json_value(),
            "latency_ms": inp.outcome.latency_ms,
            "cost_usd": inp.outcome.cost_usd,
            "trace_id": inp.outcome.trace_id,
        }
        try:
            result = fn(inp.outcome.text, context)
            if inspect.isawaitable(result):
                result = await result
        except Exception as exc:
            return _error(inp, f"{type(exc).__name__}: {exc}")
        if isinstance(result, bool):
            return _verdict(inp, result)
        if isinstance(result, int | float) and 0 <= result <= 1:
            threshold = inp.spec.threshold if inp.spec.threshold is not None else 1.0
            return _verdict(inp, result >= threshold, score=float(result))
        if isinstance(result, dict) and isinstance(result.get("pass"), bool):
            score = result.get("score", 1.0 if result["pass"] else 0.0)
            return _verdict(inp, result["pass"], str(result.get("reason", "")), score=float(score))
        return _error(inp, f"returned {_short(result)}; expected a bool, a 0..1 score or a dict")

    return check


# -- binding ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BoundAssertion:
    spec: AssertionSpec
    check: CheckFn


def bind_assertions(
    specs: list[AssertionSpec], *, base_dir: Path, allow_python: bool = False, where: str = "suite"
) -> list[BoundAssertion]:
    """Check every assertion's parameters (and load Python checks) before a case runs."""
    bound = []
    kinds: dict[str, AssertionType] | None = None
    for i, spec in enumerate(specs):
        at = f"{where}: assert[{i}]"
        if spec.type == "python":
            if not isinstance(spec.value, str):
                raise SuiteError(f"{at}: python needs FILE.py:FUNCTION")
            fn = load_python_check(
                spec.value, base_dir=base_dir, allow_python=allow_python, where=at
            )
            bound.append(BoundAssertion(spec, _python_check(fn)))
            continue
        kinds = kinds if kinds is not None else assertion_types()
        kind = kinds.get(spec.type)
        if kind is None:
            known = ", ".join(sorted([*kinds, "python"]))
            raise SuiteError(f"{at}: unknown assertion type {spec.type!r} (known: {known})")
        if kind.validate is not None:
            kind.validate(spec, at)
        bound.append(BoundAssertion(spec, kind.check))
    return bound


def score_case(verdicts: list[Verdict], threshold: float | None) -> tuple[str, float]:
    """The case's status and weighted score. With a threshold, the score decides; without,
    every assertion must pass. Any assertion error makes the case an error."""
    if not verdicts:
        return "pass", 1.0
    total = sum(v.weight for v in verdicts)
    score = sum(v.score * v.weight for v in verdicts) / total if total else 0.0
    if any(v.status == "error" for v in verdicts):
        return "error", score
    if threshold is not None:
        return ("pass" if score >= threshold else "fail"), score
    return ("pass" if all(v.status == "pass" for v in verdicts) else "fail"), score
