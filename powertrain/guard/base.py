"""The typed data every guardrail shares: actions, stages, matches, findings, the error.

A guardrail *detects*; the pipeline *acts*. A guardrail's ``check`` returns
``Match`` values that point into the text it was given (a span) or at the text
as a whole; the pipeline turns them into ``Finding`` values, which carry a
masked preview and never the matched value, and then blocks, redacts or flags
according to the guardrail's action.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar

from powertrain.errors import InvalidRequest

if TYPE_CHECKING:
    from powertrain.guard.config import Options
    from powertrain.guard.pipeline import GuardOutcome


class Action(StrEnum):
    BLOCK = "block"  # refuse the request (or the answer) with GuardrailBlocked
    REDACT = "redact"  # replace what matched with a typed placeholder
    FLAG = "flag"  # record it in the trace, change nothing


class Stage(StrEnum):
    INPUT = "input"  # the caller's messages, before cache lookup and the engine
    OUTPUT = "output"  # the model's answer, before it is stored or returned


ALL_STAGES = frozenset(Stage)
DEFAULT_ROLES = frozenset({"user", "tool"})


@dataclass(frozen=True, slots=True)
class Match:
    """What a guardrail found. ``span`` is ``(start, end)`` in the checked text, or None
    when the finding is about the text as a whole (an injection score, a size limit).

    ``detail`` is a label (``"us_ssn"``, ``"override_instructions"``) and ``reason`` a
    sentence safe to show the caller; neither may contain the matched text.
    """

    category: str
    span: tuple[int, int] | None = None
    detail: str | None = None
    score: float | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Finding:
    """One match after the pipeline acted on it; safe to log, trace and return."""

    guardrail: str
    stage: Stage
    category: str
    action: Action
    start: int | None = None
    end: int | None = None
    preview: str | None = None  # masked, e.g. "****************1111"
    detail: str | None = None
    score: float | None = None
    reason: str | None = None
    message_index: int | None = None  # which input message (None for output text)


class Guardrail(ABC):
    """One check, applied at some stages with one action. Subclass it in a plugin.

    ``type_name`` is what ``type = "..."`` names in the config; ``actions`` are the
    actions it supports (a size limit cannot redact); ``streamable`` says its
    matches are local spans a stream can be checked on with a small hold-back, as
    opposed to a verdict on the whole text.
    """

    type_name: ClassVar[str]
    actions: ClassVar[frozenset[Action]] = frozenset(Action)
    stages_supported: ClassVar[frozenset[Stage]] = ALL_STAGES
    default_action: ClassVar[Action] = Action.BLOCK
    streamable: ClassVar[bool] = False

    def __init__(
        self,
        name: str,
        *,
        action: Action | str | None = None,
        stages: Iterable[Stage | str] | None = None,
        roles: Iterable[str] | None = None,
    ):
        self.name = name
        self.action = Action(action) if action is not None else self.default_action
        if self.action not in self.actions:
            allowed = ", ".join(sorted(self.actions))
            raise ValueError(f"{self.type_name} cannot {self.action} (it can: {allowed})")
        self.stages = (
            frozenset(Stage(s) for s in stages) if stages is not None else self.stages_supported
        )
        if not self.stages or not self.stages <= self.stages_supported:
            allowed = ", ".join(sorted(self.stages_supported))
            raise ValueError(f"{self.type_name} applies to these stages only: {allowed}")
        self.roles = frozenset(roles) if roles is not None else DEFAULT_ROLES

    @classmethod
    def from_options(cls, name: str, options: Options) -> Guardrail:
        """Build one from its config table; read fields through ``options`` so unknown
        fields and wrong types become one-line config errors naming the field."""
        return cls(name, **options.common())

    @abstractmethod
    def check(self, text: str) -> Sequence[Match]:
        """Everything this guardrail finds in ``text`` (one message's text, or the output)."""

    def check_messages(self, messages: Sequence[Mapping[str, Any]]) -> Sequence[Match] | None:
        """A verdict on the whole conversation (message counts, total size), or None to be
        run on each checked message's text instead. Spans are not allowed here."""
        return None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {self.action} {sorted(self.stages)}>"


# What the caller is told each built-in category is (plugins' categories are shown as-is).
CATEGORY_NAMES: dict[str, str] = {
    "email": "an e-mail address",
    "phone": "a phone number",
    "card": "a payment card number",
    "iban": "a bank account number (IBAN)",
    "national_id": "a national identity number",
    "ip": "an IP address",
    "secret": "an API key, password or other secret",
    "prompt_injection": "a likely prompt injection",
    "banned_term": "a term that is not allowed here",
    "banned_topic": "a topic that is not allowed here",
    "schema": "output that does not match the required JSON schema",
}


class GuardrailBlocked(InvalidRequest):
    """A guardrail with ``action = "block"`` refused the request or the answer.

    The message names the guardrail and what it found, never the value itself;
    ``outcome`` keeps the findings so the refusal still lands in the trace.
    """

    code = "guardrail_blocked"

    def __init__(self, finding: Finding, outcome: GuardOutcome):
        what = CATEGORY_NAMES.get(finding.category, "content that is not allowed here")
        # In brackets: the category, then labels and reasons that are safe to show (the
        # topic, the injection signals, the limit) -- never the matched text.
        extras = [f"category {finding.category!r}"]
        if finding.detail and finding.category == "banned_topic":
            extras.append(f"topic {finding.detail!r}")
        if finding.detail and finding.category == "prompt_injection":
            extras.append(f"signals: {finding.detail}")
        if finding.reason:
            extras.append(finding.reason)
        reason = f" ({', '.join(extras)})"
        # "messages[2] contains an e-mail address", "the request is over a size limit"
        found = "is over a size limit" if finding.category == "size" else f"contains {what}"
        if finding.stage is Stage.INPUT:
            where = (
                "the request"
                if finding.message_index is None
                else f"messages[{finding.message_index}]"
            )
            advice = (
                "send a smaller request"
                if finding.category == "size"
                else "remove or rephrase it and send the request again"
            )
            message = (
                f"guardrail {finding.guardrail!r} blocked the request: {where} {found}{reason}; "
                f"{advice}"
            )
        else:
            message = (
                f"guardrail {finding.guardrail!r} blocked the response: the model's answer "
                f"{found}{reason}; rephrase the request, or ask the operator to review this "
                f"guardrail"
            )
        super().__init__(message, param="messages" if finding.stage is Stage.INPUT else None)
        self.finding = finding
        self.outcome = outcome

    @property
    def guardrail(self) -> str:
        return self.finding.guardrail

    @property
    def category(self) -> str:
        return self.finding.category


_LABEL_UNSAFE = re.compile(r"[^A-Z0-9]+")


def placeholder_label(category: str) -> str:
    return _LABEL_UNSAFE.sub("_", category.upper()).strip("_") or "REDACTED"


def mask(value: str, *, reveal: int = 4) -> str:
    """A preview that shows the shape, not the value: at most the last ``reveal``
    characters of a long value (as card receipts do), stars for the rest."""
    compact = "".join(value.split())
    if reveal and len(compact) >= 12:
        return "*" * min(len(compact) - reveal, 16) + compact[-reveal:]
    return "*" * min(len(compact), 16)
