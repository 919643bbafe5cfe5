"""Banned terms and topics, size limits and the output schema."""

from __future__ import annotations

import pytest

from powertrain.guard import BannedTerms, BannedTopics, OutputSchema, SizeLimit
from powertrain.guard.rules import fold


def spans(guard: BannedTerms, text: str) -> list[str]:
    return [text[m.span[0] : m.span[1]] for m in guard.check(text) if m.span]


@pytest.mark.parametrize(
    ("text", "hit"),
    [
        ("Is Acme Corp any good?", "Acme Corp"),
        ("ACME   CORP rocks", "ACME   CORP"),
        ("acme-corp.com", "acme-corp"),
        ("\uff21\uff23\uff2d\uff25 Corp", "\uff21\uff23\uff2d\uff25 Corp"),  # full-width
        ("\u0430cme corp", "\u0430cme corp"),  # Cyrillic a
        ("Acm\u00e9 Corp", "Acm\u00e9 Corp"),  # accent
        ("ac\u200bme corp", "ac\u200bme corp"),  # zero-width space
        ("Stra\u00dfe acme corp", "acme corp"),  # a character that folds to two
    ],
)
def test_banned_terms_see_through_unicode_tricks(text: str, hit: str) -> None:
    assert spans(BannedTerms("t", terms=["acme corp"]), text) == [hit]


@pytest.mark.parametrize("text", ["acmes corporation", "macme corp", "acme", "corp acme"])
def test_banned_terms_match_whole_words(text: str) -> None:
    assert spans(BannedTerms("t", terms=["acme corp"]), text) == []


def test_banned_patterns_and_folding() -> None:
    guard = BannedTerms("t", terms=["foo"], patterns=[r"project\s+x\d+"])
    assert spans(guard, "Project  X12 and FOO") == ["FOO", "Project  X12"]
    folded, index = fold("\uff21b")
    assert folded == "ab" and index == [0, 1]
    with pytest.raises(ValueError, match="at least one"):
        BannedTerms("t", terms=[" "])


def test_banned_topics() -> None:
    guard = BannedTopics(
        "topics",
        topics={"politics": ["election", "senator"], "medical": ["diagnosis", "prescription"]},
    )
    [match] = guard.check("Who will win the next Election?")
    assert (match.category, match.detail, match.span) == ("banned_topic", "politics", None)
    assert guard.check("What is the weather like?") == []
    two = BannedTopics("t", topics={"politics": ["election", "senator"]}, min_hits=2)
    assert two.check("the election") == []
    assert two.check("the senator won the election") != []


def test_banned_topics_with_a_scorer() -> None:
    guard = BannedTopics(
        "t",
        topics={"crypto": ["bitcoin"]},
        scorer=lambda text: {"crypto": 0.9 if "coins" in text else 0.1, "unknown": 1.0},
        threshold=0.8,
    )
    assert [m.detail for m in guard.check("which coins should I buy")] == ["crypto"]
    assert guard.check("nothing here") == []


def test_size_limits() -> None:
    guard = SizeLimit("size", max_messages=2, max_chars=10, max_tokens=3)
    messages = [{"role": "user", "content": "0123456789abc"}] * 3
    found = {m.detail: m.reason for m in guard.check_messages(messages)}
    assert set(found) == {"max_messages", "max_chars", "max_tokens"}
    assert found["max_messages"] == "3 messages, over max_messages = 2"
    assert guard.check("short") == []
    counted = SizeLimit("size", max_tokens=2, count_tokens=lambda text: len(text.split()))
    assert counted.check("one two") == [] and counted.check("one two three")
    with pytest.raises(ValueError, match="at least one"):
        SizeLimit("size")


SCHEMA = {
    "type": "object",
    "properties": {"label": {"enum": ["yes", "no"]}, "n": {"type": "integer"}},
    "required": ["label"],
}


def test_output_schema() -> None:
    guard = OutputSchema("schema", schema=SCHEMA)
    assert guard.check('{"label": "yes", "n": 3}') == []
    assert guard.check('```json\n{"label": "no"}\n```') == []
    [bad_json] = guard.check("yes")
    assert bad_json.detail == "invalid_json"
    [mismatch] = guard.check('{"label": "secret-value-42"}')
    assert mismatch.detail == "schema_mismatch"
    assert mismatch.reason is not None and "/label" in mismatch.reason
    assert "secret-value-42" not in mismatch.reason  # the value is not echoed
    with pytest.raises(ValueError, match="JSON Schema"):
        OutputSchema("schema", schema={"type": "nonsense"})
    with pytest.raises(ValueError, match="stages"):
        OutputSchema("schema", schema=SCHEMA, stages=["input"])
