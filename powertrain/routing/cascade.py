"""The cost cascade's judgement: is the cheap model's answer good enough to return?

An answer is escalated to the next (dearer) model when, in this order:

- ``schema``: the request wants JSON (``response_format``) and the answer is
  not JSON, or does not match the schema;
- ``confidence``: the answer's confidence is below ``min_confidence``;
- ``guardrail``: the injected output guardrail objects to it.

Confidence comes from the answer itself, the best signal first:

- ``calibrated``: the result's own ``confidence`` (``ChatResult.confidence``),
  a probability calibrated on predictions for examples the model was not
  fitted on, which the ``classifier`` engine sets (the softmax of its
  temperature-scaled logits);
- ``logprobs``: when the result carries token log-probabilities (a
  ``logprobs`` attribute: one float per generated token), the geometric mean
  token probability, ``exp(mean(logprobs))``. No engine returns them yet (the
  chat request does not accept ``logprobs``);
- ``self_reported``: the model's own ``confidence`` field (a number in
  [0, 1]) when the answer is a JSON object that has one, which a task's output
  schema can ask for. A self-reported score is a weak signal, especially from
  a small model: it is used only when nothing better exists.

An answer with none of them is never escalated for confidence (the verdict
says so in the trace).
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, best_match

# The output guardrail, injected by the gateway: the answer's text in, a reason to
# refuse it (safe to trace) or None out.
GuardrailFn = Callable[[str], Awaitable[str | None] | str | None]

_MAX_REASON_CHARS = 300


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a cascade step's answer is returned, and why not."""

    accepted: bool
    reason: str | None = None  # why it was escalated
    confidence: float | None = None
    confidence_source: str | None = None  # "calibrated" | "logprobs" | "self_reported" | None

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"accepted": self.accepted}
        if self.reason:
            out["reason"] = self.reason
        if self.confidence is not None:
            out["confidence"] = round(self.confidence, 4)
            out["confidence_source"] = self.confidence_source
        return out


def confidence_from_logprobs(logprobs: Sequence[float]) -> float | None:
    """The geometric mean probability of the generated tokens, in [0, 1]."""
    values = [float(x) for x in logprobs if x is not None and math.isfinite(float(x))]
    if not values:
        return None
    return min(1.0, math.exp(sum(values) / len(values)))


def self_reported_confidence(text: str) -> float | None:
    """A JSON object answer's own ``confidence`` number in [0, 1], if it has one."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    score = value.get("confidence")
    if isinstance(score, bool) or not isinstance(score, int | float):
        return None
    score = float(score)
    return score if 0.0 <= score <= 1.0 else None


def confidence_of(result: Any) -> tuple[float | None, str | None]:
    """``(confidence, source)`` of an engine result (see the module's docstring)."""
    calibrated = getattr(result, "confidence", None)
    if (
        isinstance(calibrated, int | float)
        and not isinstance(calibrated, bool)
        and 0.0 <= calibrated <= 1.0
    ):
        return float(calibrated), "calibrated"
    logprobs = getattr(result, "logprobs", None)
    if logprobs:
        confidence = confidence_from_logprobs(logprobs)
        if confidence is not None:
            return confidence, "logprobs"
    content = getattr(result, "content", None)
    if isinstance(content, str):
        confidence = self_reported_confidence(content)
        if confidence is not None:
            return confidence, "self_reported"
    return None, None


def schema_problem(schema: dict[str, Any], text: str) -> str | None:
    """Why ``text`` is not JSON matching ``schema`` ({} accepts any JSON), or None."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return f"not JSON ({exc.msg})"
    if not schema:
        return None
    try:
        error = best_match(Draft202012Validator(schema).iter_errors(value))
    except SchemaError as exc:  # pragma: no cover - schemas are checked when requests arrive
        return f"the schema is invalid: {exc.message}"
    if error is None:
        return None
    path = "/".join(str(p) for p in error.absolute_path)
    return (f"{path}: {error.message}" if path else error.message)[:_MAX_REASON_CHARS]


class CascadeCheck:
    """``accept(result) -> Verdict`` for one cascade call, built by the gateway with the
    request's schema and its output guardrail."""

    def __init__(
        self,
        escalate_on: Collection[str],
        *,
        min_confidence: float | None = None,
        schema: dict[str, Any] | None = None,
        guardrail: GuardrailFn | None = None,
    ):
        self.escalate_on = frozenset(escalate_on)
        self.min_confidence = min_confidence
        self.schema = schema
        self.guardrail = guardrail

    async def __call__(self, result: Any) -> Verdict:
        text = getattr(result, "content", None)
        text = text if isinstance(text, str) else str(result)
        if "schema" in self.escalate_on and self.schema is not None:
            problem = schema_problem(self.schema, text)
            if problem is not None:
                return Verdict(False, f"schema: {problem}")
        confidence, source = confidence_of(result)
        if (
            "confidence" in self.escalate_on
            and self.min_confidence is not None
            and confidence is not None
            and confidence < self.min_confidence
        ):
            return Verdict(
                False,
                f"confidence: {confidence:.2f} < {self.min_confidence:g} ({source})",
                confidence,
                source,
            )
        if "guardrail" in self.escalate_on and self.guardrail is not None:
            objection = self.guardrail(text)
            if inspect.isawaitable(objection):
                objection = await objection
            if objection:
                return Verdict(False, f"guardrail: {objection}", confidence, source)
        return Verdict(True, None, confidence, source)
