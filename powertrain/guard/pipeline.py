"""Running guardrails in order over a request's messages or a model's answer.

``block`` stops at the first blocking finding (``GuardrailBlocked``), ``redact``
rewrites the text the next guardrail sees, ``flag`` only records. Findings and
trace events carry categories, counts, masked previews and timings — never the
matched values. Redaction gives each distinct value a numbered placeholder
(``[EMAIL_1]``) that stays the same for the whole request, input and output,
when the same ``Placeholders`` is passed to both.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from powertrain.guard.base import (
    Action,
    Finding,
    Guardrail,
    GuardrailBlocked,
    Match,
    Stage,
    mask,
    placeholder_label,
)

if TYPE_CHECKING:
    from powertrain.guard.streaming import StreamGuard

_NUMBERS = frozenset({"card", "iban", "phone", "national_id"})
_SEPARATORS = re.compile(r"[^0-9A-Za-z+]")
# How much of a value a preview may show (the last N characters); none by default.
_REVEAL = {"card": 4, "iban": 4, "phone": 2}


class Placeholders:
    """The placeholders handed out in one request: the same value always gets the same one.

    It holds the original values (so ``restore`` can put them back in an answer for the
    caller who sent them); it never prints them.
    """

    def __init__(self) -> None:
        self._tokens: dict[tuple[str, str], str] = {}
        self._values: dict[str, str] = {}
        self._counts: Counter[str] = Counter()

    def token(self, category: str, value: str) -> str:
        # The same number written with other separators is the same value.
        compact = _SEPARATORS.sub("", value) if category in _NUMBERS else "".join(value.split())
        key = (category, compact.casefold())
        token = self._tokens.get(key)
        if token is None:
            label = placeholder_label(category)
            self._counts[label] += 1
            token = f"[{label}_{self._counts[label]}]"
            self._tokens[key] = token
            self._values[token] = value
        return token

    def restore(self, text: str) -> str:
        """``text`` with every placeholder replaced by the value it stands for."""
        for token, value in self._values.items():
            if token in text:
                text = text.replace(token, value)
        return text

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"<Placeholders: {len(self)} values>"


@dataclass
class GuardOutcome:
    """What the guardrails of one stage did."""

    stage: Stage
    placeholders: Placeholders
    findings: list[Finding] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    text: str | None = None  # the (possibly redacted) output text
    messages: list[dict[str, Any]] | None = None  # the (possibly redacted) input messages
    blocked_by: Finding | None = None

    @property
    def redacted(self) -> int:
        return sum(f.action is Action.REDACT for f in self.findings)

    @property
    def flagged(self) -> bool:
        return bool(self.findings)

    def as_trace_events(self) -> list[dict[str, Any]]:
        """One plain dict per (guardrail, category, action): counts and time, no values."""
        events: dict[tuple[str, str, str], dict[str, Any]] = {}
        for f in self.findings:
            key = (f.guardrail, f.category, f.action.value)
            event = events.get(key)
            if event is None:
                event = events[key] = {
                    "type": "guardrail",
                    "guardrail": f.guardrail,
                    "stage": f.stage.value,
                    "category": f.category,
                    "action": f.action.value,
                    "count": 0,
                    "ms": round(self.timings_ms.get(f.guardrail, 0.0), 3),
                    "details": [],
                    "blocked": False,
                }
            event["count"] += 1
            if f.detail and f.detail not in event["details"]:
                event["details"].append(f.detail)
            if f.score is not None:
                event["score"] = max(event.get("score", 0.0), f.score)
            if f is self.blocked_by:
                event["blocked"] = True
        return list(events.values())


def message_texts(message: Mapping[str, Any]) -> list[tuple[int | None, str]]:
    """The texts of a message's content: ``(None, text)`` for a string, ``(i, text)``
    for each ``{"type": "text"}`` part of a list (images and the like are skipped)."""
    content = message.get("content")
    if isinstance(content, str):
        return [(None, content)]
    if isinstance(content, list):
        return [
            (i, part["text"])
            for i, part in enumerate(content)
            if isinstance(part, Mapping)
            and part.get("type") == "text"
            and isinstance(part.get("text"), str)
        ]
    return []


def _with_text(message: dict[str, Any], part: int | None, text: str) -> dict[str, Any]:
    if part is None:
        return {**message, "content": text}
    parts = list(message["content"])
    parts[part] = {**parts[part], "text": text}
    return {**message, "content": parts}


def _as_dict(message: Mapping[str, Any] | BaseModel) -> dict[str, Any]:
    if isinstance(message, BaseModel):
        return message.model_dump(exclude_none=True)
    if isinstance(message, Mapping):
        return dict(message)
    raise TypeError(f"a message must be a mapping, not {type(message).__name__}")


def redact(text: str, matches: Iterable[Match], placeholders: Placeholders) -> str:
    """``text`` with each match replaced by its placeholder (a whole-text match replaces
    everything)."""
    spans: list[tuple[int, int, str]] = []
    for m in matches:
        start, end = m.span if m.span is not None else (0, len(text))
        spans.append((start, end, m.category))
    out: list[str] = []
    position = 0
    for start, end, category in sorted(spans):
        if start < position:
            continue  # overlaps one already replaced
        out.append(text[position:start])
        out.append(placeholders.token(category, text[start:end]))
        position = end
    out.append(text[position:])
    return "".join(out)


class GuardPipeline:
    """An ordered list of guardrails; run it on input messages and on output text."""

    def __init__(self, guardrails: Iterable[Guardrail] = ()):
        self.guardrails: tuple[Guardrail, ...] = tuple(guardrails)
        names = [g.name for g in self.guardrails]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"guardrail names must be unique: {', '.join(duplicates)}")

    def __bool__(self) -> bool:
        return bool(self.guardrails)

    def __repr__(self) -> str:
        return f"<GuardPipeline {[g.name for g in self.guardrails]}>"

    def for_stage(self, stage: Stage) -> list[Guardrail]:
        return [g for g in self.guardrails if stage in g.stages]

    def check_input(
        self,
        messages: Sequence[Mapping[str, Any] | BaseModel],
        *,
        placeholders: Placeholders | None = None,
        raise_on_block: bool = True,
    ) -> GuardOutcome:
        """Check (and maybe redact) chat messages (dicts, or pydantic messages). Each guardrail reads the messages whose
        role it covers (``user`` and ``tool`` unless configured); the input is not changed,
        ``outcome.messages`` is the version to send on."""
        outcome = GuardOutcome(
            Stage.INPUT, placeholders or Placeholders(), messages=[_as_dict(m) for m in messages]
        )
        assert outcome.messages is not None
        for guardrail in self.for_stage(Stage.INPUT):
            started = time.perf_counter()
            try:
                whole = guardrail.check_messages(outcome.messages)
                if whole is not None:
                    act(guardrail, outcome, list(whole), None, None)
                    continue
                for i, message in enumerate(outcome.messages):
                    if message.get("role") not in guardrail.roles:
                        continue
                    for part, text in message_texts(message):
                        matches = list(guardrail.check(text))
                        if not matches:
                            continue
                        new_text = act(guardrail, outcome, matches, text, i)
                        if new_text is not None:
                            message = _with_text(message, part, new_text)
                            outcome.messages[i] = message
            finally:
                add_time(outcome, guardrail, started)
            if outcome.blocked_by is not None:
                break
        return finished(outcome, raise_on_block)

    def check_output(
        self,
        text: str,
        *,
        placeholders: Placeholders | None = None,
        raise_on_block: bool = True,
    ) -> GuardOutcome:
        """Check (and maybe redact) a model's answer; ``outcome.text`` is what to return."""
        outcome = GuardOutcome(Stage.OUTPUT, placeholders or Placeholders(), text=text)
        for guardrail in self.for_stage(Stage.OUTPUT):
            started = time.perf_counter()
            try:
                assert outcome.text is not None
                matches = list(guardrail.check(outcome.text))
                if matches:
                    new_text = act(guardrail, outcome, matches, outcome.text, None)
                    if new_text is not None:
                        outcome.text = new_text
            finally:
                add_time(outcome, guardrail, started)
            if outcome.blocked_by is not None:
                break
        return finished(outcome, raise_on_block)

    def stream(self, *, placeholders: Placeholders | None = None) -> StreamGuard:
        """A checker for an answer that arrives in pieces (see ``StreamGuard``)."""
        from powertrain.guard.streaming import StreamGuard

        return StreamGuard(self, placeholders=placeholders)


def act(
    guardrail: Guardrail,
    outcome: GuardOutcome,
    matches: list[Match],
    text: str | None,
    message_index: int | None,
    *,
    offset: int = 0,
) -> str | None:
    """Record ``guardrail``'s findings in ``text`` and apply its action; returns the
    redacted text, if it redacted. ``offset`` shifts recorded spans (a stream's piece)."""
    action = guardrail.action
    if action is Action.REDACT and text is None:
        action = Action.FLAG  # a verdict on the whole conversation has nothing to replace
    for m in matches:
        start, end = m.span if m.span is not None else (None, None)
        preview = None
        if text is not None and start is not None and end is not None:
            preview = mask(text[start:end], reveal=_REVEAL.get(m.category, 0))
        finding = Finding(
            guardrail=guardrail.name,
            stage=outcome.stage,
            category=m.category,
            action=action,
            start=None if start is None else start + offset,
            end=None if end is None else end + offset,
            preview=preview,
            detail=m.detail,
            score=m.score,
            reason=m.reason,
            message_index=message_index,
        )
        outcome.findings.append(finding)
        if action is Action.BLOCK and outcome.blocked_by is None:
            outcome.blocked_by = finding
    if action is Action.REDACT and text is not None:
        return redact(text, matches, outcome.placeholders)
    return None


def add_time(outcome: GuardOutcome, guardrail: Guardrail, started: float) -> None:
    elapsed = (time.perf_counter() - started) * 1000
    outcome.timings_ms[guardrail.name] = outcome.timings_ms.get(guardrail.name, 0.0) + elapsed


def finished(outcome: GuardOutcome, raise_on_block: bool) -> GuardOutcome:
    if outcome.blocked_by is not None and raise_on_block:
        raise GuardrailBlocked(outcome.blocked_by, outcome)
    return outcome
