"""LLM-as-judge: a catalog model grades an output against a rubric.

The judge must answer with a JSON object ``{"reasoning": "...", "score": 0..1}``
(``"pass": true|false`` alone is accepted too). A reply that cannot be read that
way is a :class:`JudgeUnparseable` — reported as an error, never scored as a pass.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

JUDGE_SYSTEM = (
    "You are a strict evaluator. Grade the OUTPUT against the RUBRIC. Reply with only a "
    'JSON object: {"reasoning": "<one or two sentences>", "score": <a number from 0 to 1>} '
    "where 1 means the rubric is fully met and 0 means it is not met at all."
)

_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


class JudgeUnparseable(ValueError):
    """The judge's reply holds no usable score."""


@dataclass(frozen=True)
class JudgeVerdict:
    score: float
    reasoning: str


def judge_prompt(rubric: str, *, output: str, variables: dict[str, Any], expected: Any) -> str:
    """The user message the judge gets. Values are quoted as data, never as instructions."""
    parts = [f"RUBRIC:\n{rubric}"]
    if variables:
        parts.append("INPUT (JSON):\n" + json.dumps(variables, ensure_ascii=False, default=str))
    if expected is not None:
        parts.append("REFERENCE (JSON):\n" + json.dumps(expected, ensure_ascii=False, default=str))
    parts.append(f"OUTPUT:\n<<<\n{output}\n>>>")
    return "\n\n".join(parts)


def parse_verdict(reply: str) -> JudgeVerdict:
    match = _OBJECT.search(reply)
    if match is None:
        raise JudgeUnparseable(f"the judge's reply has no JSON object: {reply[:200]!r}")
    try:
        data = json.loads(match.group(0))
    except json.JSONDecodeError:
        raise JudgeUnparseable(f"the judge's reply is not valid JSON: {reply[:200]!r}") from None
    if not isinstance(data, dict):
        raise JudgeUnparseable("the judge's reply is not a JSON object")
    reasoning = str(data.get("reasoning", ""))
    score = data.get("score")
    if isinstance(score, bool) or score is None:
        verdict = data.get("pass", score)
        if not isinstance(verdict, bool):
            raise JudgeUnparseable(f"the judge's reply has no numeric score: {reply[:200]!r}")
        return JudgeVerdict(1.0 if verdict else 0.0, reasoning)
    if not isinstance(score, int | float) or not 0 <= score <= 1:
        raise JudgeUnparseable(f"the judge's score {score!r} is not a number from 0 to 1")
    return JudgeVerdict(float(score), reasoning)
