"""The cascade's judgement: schema, confidence (logprobs or self-reported) and guardrail."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest

from powertrain.routing import CascadeCheck, Verdict, confidence_from_logprobs, confidence_of
from powertrain.schemas import ChatResult

SCHEMA = {
    "type": "object",
    "properties": {"label": {"type": "string"}, "confidence": {"type": "number"}},
    "required": ["label"],
}


@dataclass
class WithLogprobs:
    content: str
    logprobs: list[float] = field(default_factory=list)


def test_confidence_from_logprobs_is_the_geometric_mean_probability() -> None:
    assert confidence_from_logprobs([0.0, 0.0]) == 1.0
    assert confidence_from_logprobs([math.log(0.5)] * 4) == pytest.approx(0.5)
    assert confidence_from_logprobs([math.log(0.9), math.log(0.1)]) == pytest.approx(0.3)
    assert confidence_from_logprobs([]) is None
    assert confidence_from_logprobs([float("-inf")]) is None


def test_where_confidence_comes_from() -> None:
    assert confidence_of(WithLogprobs("x", [math.log(0.8)])) == (pytest.approx(0.8), "logprobs")
    # logprobs win over a self-reported number
    reported = '{"label": "a", "confidence": 0.2}'
    assert confidence_of(WithLogprobs(reported, [0.0]))[1] == "logprobs"
    assert confidence_of(ChatResult(content=reported)) == (0.2, "self_reported")
    for text in ('{"confidence": 1.5}', '{"confidence": true}', "[0.9]", "plain text"):
        assert confidence_of(ChatResult(content=text)) == (None, None)


async def test_schema_failures_escalate() -> None:
    check = CascadeCheck(["schema"], schema=SCHEMA)
    assert (await check(ChatResult(content='{"label": "refund"}'))).accepted
    verdict = await check(ChatResult(content="refund"))
    assert not verdict.accepted and verdict.reason is not None
    assert verdict.reason.startswith("schema: not JSON")
    verdict = await check(ChatResult(content='{"label": 3}'))
    assert verdict.reason == "schema: label: 3 is not of type 'string'"
    # json_object mode: any JSON will do
    assert (await CascadeCheck(["schema"], schema={})(ChatResult(content="[1]"))).accepted
    # No schema on the request: nothing to check.
    assert (await CascadeCheck(["schema"])(ChatResult(content="free text"))).accepted


async def test_low_confidence_escalates_and_none_is_not_held_against_it() -> None:
    check = CascadeCheck(["confidence"], min_confidence=0.6)
    low = await check(ChatResult(content='{"label": "a", "confidence": 0.4}'))
    assert low == Verdict(False, "confidence: 0.40 < 0.6 (self_reported)", 0.4, "self_reported")
    high = await check(WithLogprobs("yes", [math.log(0.9)]))
    assert high.accepted and high.confidence == pytest.approx(0.9)
    assert high.describe() == {
        "accepted": True,
        "confidence": 0.9,
        "confidence_source": "logprobs",
    }
    unknown = await check(ChatResult(content="no signal"))
    assert unknown == Verdict(True, None, None, None)


async def test_the_guardrail_is_asked_last_and_may_be_async() -> None:
    asked: list[str] = []

    async def guardrail(text: str) -> str | None:
        asked.append(text)
        return "mentions a competitor" if "acme" in text else None

    check = CascadeCheck(["schema", "guardrail"], schema={}, guardrail=guardrail)
    assert not (await check(ChatResult(content="not json"))).accepted
    assert asked == []  # the schema failed first; the guardrail was not paid for
    verdict = await check(ChatResult(content='"try acme instead"'))
    assert verdict.reason == "guardrail: mentions a competitor"
    sync = CascadeCheck(["guardrail"], guardrail=lambda text: None)
    assert (await sync(ChatResult(content="fine"))).accepted


async def test_checks_not_in_escalate_on_are_not_run() -> None:
    check = CascadeCheck(
        ["guardrail"], min_confidence=0.9, schema=SCHEMA, guardrail=lambda text: None
    )
    assert (await check(ChatResult(content='{"confidence": 0.1}'))).accepted
