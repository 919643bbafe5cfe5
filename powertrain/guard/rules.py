"""Rules an operator writes down: banned terms and topics, size limits, an output schema.

Terms are matched on *folded* text — Unicode NFKD with accents dropped, case
folded, common Cyrillic and Greek look-alikes mapped to Latin, invisible
characters removed — on word boundaries, so "acme" written in full-width
letters, with an accent, or with a Cyrillic "a" matches the term "acme", and
"acmes" or "macme" do not.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, best_match

from powertrain.engines.base import estimate_tokens
from powertrain.guard.base import Action, Guardrail, Match, Stage

if TYPE_CHECKING:
    from powertrain.guard.config import Options

TokenCounter = Callable[[str], int]
TopicScorer = Callable[[str], Mapping[str, float]]

# Look-alike letters from other scripts that NFKD leaves alone (from Unicode's
# confusables: the ones that pass for Latin letters in ordinary fonts).
_LOOKALIKES = {
    "CYRILLIC SMALL LETTER A": "a",
    "CYRILLIC SMALL LETTER VE": "b",
    "CYRILLIC SMALL LETTER ES": "c",
    "CYRILLIC SMALL LETTER KOMI DE": "d",
    "CYRILLIC SMALL LETTER IE": "e",
    "CYRILLIC SMALL LETTER SHHA": "h",
    "CYRILLIC SMALL LETTER EN": "h",
    "CYRILLIC SMALL LETTER BYELORUSSIAN-UKRAINIAN I": "i",
    "CYRILLIC SMALL LETTER JE": "j",
    "CYRILLIC SMALL LETTER KA": "k",
    "CYRILLIC SMALL LETTER PALOCHKA": "l",
    "CYRILLIC SMALL LETTER EM": "m",
    "CYRILLIC SMALL LETTER O": "o",
    "CYRILLIC SMALL LETTER ER": "p",
    "CYRILLIC SMALL LETTER QA": "q",
    "CYRILLIC SMALL LETTER DZE": "s",
    "CYRILLIC SMALL LETTER TE": "t",
    "CYRILLIC SMALL LETTER IZHITSA": "v",
    "CYRILLIC SMALL LETTER WE": "w",
    "CYRILLIC SMALL LETTER HA": "x",
    "CYRILLIC SMALL LETTER U": "y",
    "GREEK SMALL LETTER ALPHA": "a",
    "GREEK SMALL LETTER BETA": "b",
    "GREEK SMALL LETTER EPSILON": "e",
    "GREEK SMALL LETTER ETA": "n",
    "GREEK SMALL LETTER IOTA": "i",
    "GREEK SMALL LETTER KAPPA": "k",
    "GREEK SMALL LETTER OMICRON": "o",
    "GREEK SMALL LETTER RHO": "p",
    "GREEK SMALL LETTER TAU": "t",
    "GREEK SMALL LETTER UPSILON": "u",
    "GREEK SMALL LETTER NU": "v",
    "GREEK SMALL LETTER CHI": "x",
}
_CONFUSABLES = str.maketrans({unicodedata.lookup(n): latin for n, latin in _LOOKALIKES.items()})
_INVISIBLE = frozenset("\u200b\u200c\u200d\u2060\ufeff\u00ad\u180e")


@lru_cache(maxsize=4096)
def _fold_char(char: str) -> str:
    if char in _INVISIBLE:
        return ""
    decomposed = unicodedata.normalize("NFKD", char)
    base = "".join(c for c in decomposed if not unicodedata.combining(c))
    return base.casefold().translate(_CONFUSABLES)


def fold(text: str) -> tuple[str, list[int] | None]:
    """``text`` folded for matching, and for each folded character the index of the
    original character it came from (None when they are the same: ASCII text)."""
    if text.isascii():
        return text.lower(), None
    out: list[str] = []
    index: list[int] = []
    for i, char in enumerate(text):
        folded = char.lower() if char.isascii() else _fold_char(char)
        out.append(folded)
        index.extend([i] * len(folded))
    return "".join(out), index


def original_span(index: list[int] | None, start: int, end: int) -> tuple[int, int]:
    if index is None:
        return start, end
    return index[start], index[end - 1] + 1


def phrase_pattern(phrases: Iterable[str]) -> re.Pattern[str] | None:
    """One pattern for all ``phrases`` (folded), on word boundaries; the words of a phrase
    may be separated by any run of spaces or punctuation ("acme corp", "acme-corp")."""
    parts = []
    for phrase in sorted({fold(p)[0].strip() for p in phrases if p.strip()}, key=len, reverse=True):
        words = [re.escape(w) for w in re.split(r"[\W_]+", phrase) if w]
        if words:
            parts.append(r"[\W_]+".join(words))
    if not parts:
        return None
    return re.compile(r"(?<!\w)(?:" + "|".join(parts) + r")(?!\w)")


class BannedTerms(Guardrail):
    """Terms (and optional regular expressions) that may not appear."""

    type_name = "banned_terms"
    default_action = Action.BLOCK
    streamable = True

    def __init__(
        self,
        name: str,
        *,
        terms: Iterable[str] = (),
        patterns: Iterable[str] = (),
        action: Action | str | None = None,
        stages: Iterable[Stage | str] | None = None,
        roles: Iterable[str] | None = None,
    ):
        super().__init__(name, action=action, stages=stages, roles=roles)
        self._terms = phrase_pattern(terms)
        self._patterns = [re.compile(p, re.IGNORECASE) for p in patterns]
        if self._terms is None and not self._patterns:
            raise ValueError("give at least one term or pattern")

    @classmethod
    def from_options(cls, name: str, options: Options) -> Guardrail:
        return cls(
            name,
            terms=options.str_list("terms", default=[]) or [],
            patterns=options.regex_list("patterns"),
            **options.common(),
        )

    def check(self, text: str) -> list[Match]:
        found = []
        if self._terms is not None:
            folded, index = fold(text)
            for m in self._terms.finditer(folded):
                found.append(Match("banned_term", original_span(index, *m.span())))
        for pattern in self._patterns:
            found.extend(
                Match("banned_term", m.span()) for m in pattern.finditer(text) if m.group()
            )
        return found


class BannedTopics(Guardrail):
    """Topics, each named by a list of keywords or phrases; a text is on a topic when it
    mentions ``min_hits`` distinct ones, or when ``scorer`` (an embedding similarity, say)
    gives the topic at least ``threshold``."""

    type_name = "banned_topics"
    actions = frozenset({Action.BLOCK, Action.FLAG})
    default_action = Action.BLOCK

    def __init__(
        self,
        name: str,
        *,
        topics: Mapping[str, Sequence[str]],
        min_hits: int = 1,
        scorer: TopicScorer | None = None,
        threshold: float = 0.8,
        action: Action | str | None = None,
        stages: Iterable[Stage | str] | None = None,
        roles: Iterable[str] | None = None,
    ):
        super().__init__(name, action=action, stages=stages, roles=roles)
        if not topics:
            raise ValueError("give at least one topic")
        if min_hits < 1:
            raise ValueError("min_hits must be at least 1")
        self.min_hits = min_hits
        self.scorer = scorer
        self.threshold = threshold
        self._topics = {topic: phrase_pattern(words) for topic, words in topics.items()}

    @classmethod
    def from_options(cls, name: str, options: Options) -> Guardrail:
        return cls(
            name,
            topics=options.topics("topics"),
            min_hits=int(options.number("min_hits", default=1, minimum=1, integer=True)),
            scorer=options.function("scorer"),
            threshold=options.number("threshold", default=0.8, minimum=0.0, maximum=1.0),
            **options.common(),
        )

    def check(self, text: str) -> list[Match]:
        folded, _ = fold(text)
        found: dict[str, Match] = {}
        for topic, pattern in self._topics.items():
            if pattern is None:
                continue
            hits = {m.group() for m in pattern.finditer(folded)}
            if len(hits) >= self.min_hits:
                found[topic] = Match("banned_topic", None, detail=topic, score=1.0)
        if self.scorer is not None:
            for topic, score in self.scorer(text).items():
                if topic in self._topics and topic not in found and score >= self.threshold:
                    found[topic] = Match("banned_topic", None, detail=topic, score=float(score))
        return list(found.values())


class SizeLimit(Guardrail):
    """Most characters, messages and tokens. Over a limit is refused (or flagged), never
    truncated. On input, characters and tokens count every message's text."""

    type_name = "size"
    actions = frozenset({Action.BLOCK, Action.FLAG})
    default_action = Action.BLOCK

    def __init__(
        self,
        name: str,
        *,
        max_chars: int | None = None,
        max_messages: int | None = None,
        max_tokens: int | None = None,
        count_tokens: TokenCounter | None = None,
        action: Action | str | None = None,
        stages: Iterable[Stage | str] | None = None,
        roles: Iterable[str] | None = None,
    ):
        super().__init__(name, action=action, stages=stages, roles=roles)
        if max_chars is None and max_messages is None and max_tokens is None:
            raise ValueError("give at least one of max_chars, max_messages, max_tokens")
        self.max_chars = max_chars
        self.max_messages = max_messages
        self.max_tokens = max_tokens
        # Without the model's tokenizer, about four bytes of UTF-8 per token.
        self.count_tokens = count_tokens or estimate_tokens

    @classmethod
    def from_options(cls, name: str, options: Options) -> Guardrail:
        def limit(field: str) -> int | None:
            value = options.number(field, default=None, minimum=1, integer=True)
            return None if value is None else int(value)

        return cls(
            name,
            max_chars=limit("max_chars"),
            max_messages=limit("max_messages"),
            max_tokens=limit("max_tokens"),
            **options.common(),
        )

    def check(self, text: str) -> list[Match]:
        return self._limits(len(text), None, text)

    def check_messages(self, messages: Sequence[Mapping[str, Any]]) -> list[Match]:
        from powertrain.guard.pipeline import message_texts

        text = "\n".join(t for m in messages for _i, t in message_texts(m))
        return self._limits(len(text), len(messages), text)

    def _limits(self, chars: int, messages: int | None, text: str) -> list[Match]:
        over = []
        if self.max_messages is not None and messages is not None and messages > self.max_messages:
            over.append(("max_messages", messages, self.max_messages, "messages"))
        if self.max_chars is not None and chars > self.max_chars:
            over.append(("max_chars", chars, self.max_chars, "characters"))
        if self.max_tokens is not None:
            tokens = self.count_tokens(text)
            if tokens > self.max_tokens:
                over.append(("max_tokens", tokens, self.max_tokens, "tokens"))
        return [
            Match("size", None, detail=field, reason=f"{n} {unit}, over {field} = {limit}")
            for field, n, limit, unit in over
        ]


_FENCE = re.compile(r"^\s*```(?:json|JSON)?\s*\n(.*?)\n?```\s*$", re.DOTALL)


class OutputSchema(Guardrail):
    """The model's answer must be JSON valid under a JSON Schema (Draft 2020-12). A reply
    wrapped in one Markdown code fence is unwrapped first."""

    type_name = "schema"
    actions = frozenset({Action.BLOCK, Action.FLAG})
    stages_supported = frozenset({Stage.OUTPUT})
    default_action = Action.BLOCK

    def __init__(
        self,
        name: str,
        *,
        schema: Mapping[str, Any],
        action: Action | str | None = None,
        stages: Iterable[Stage | str] | None = None,
        roles: Iterable[str] | None = None,
    ):
        super().__init__(name, action=action, stages=stages, roles=roles)
        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as exc:
            raise ValueError(f"not a valid JSON Schema: {exc.message}") from None
        self._validator = Draft202012Validator(schema)

    @classmethod
    def from_options(cls, name: str, options: Options) -> Guardrail:
        return cls(name, schema=options.schema("schema"), **options.common())

    def check(self, text: str) -> list[Match]:
        fenced = _FENCE.match(text)
        try:
            value = json.loads(fenced.group(1) if fenced else text)
        except json.JSONDecodeError:
            return [Match("schema", None, detail="invalid_json", reason="the answer is not JSON")]
        error = best_match(self._validator.iter_errors(value))
        if error is None:
            return []
        # Name the place and the rule, not the offending value (it may be anything).
        path = "/" + "/".join(str(p) for p in error.absolute_path)
        return [
            Match(
                "schema",
                None,
                detail="schema_mismatch",
                reason=f"at {path} it fails the schema's {error.validator!r} rule",
            )
        ]
