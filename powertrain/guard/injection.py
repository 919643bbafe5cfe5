"""Prompt-injection heuristics, with room for a classifier.

Each heuristic is a *signal* with a weight; the score is the chance that at
least one fired signal is right, ``1 - prod(1 - weight)``, so two weak signals
add up and no single weak one decides. Text is matched in several views (NFKC
and case-folded; invisible characters removed; leetspeak and letter-spacing
undone; base64 payloads decoded) so trivial obfuscation does not hide a phrase,
and the obfuscation itself is a signal. An optional classifier — any callable
from text to a probability — is combined by taking the larger score. Nothing is
downloaded: a classifier is whatever the caller passes in.
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from powertrain.guard.base import Action, Guardrail, Match, Stage

if TYPE_CHECKING:
    from powertrain.guard.config import Options

Classifier = Callable[[str], float]

_TARGETS = (
    r"(?:instructions?|prompts?|rules|directives?|directions|guidelines|guidance|guardrails|"
    r"constraints|commands|programming|polic(?:y|ies)|restrictions|safety (?:rules|guidelines)|"
    r"system message)"
)
_QUALIFIERS = (
    r"(?:previous|prior|preceding|above|earlier|foregoing|original|initial|system|developer|"
    r"all|any|every|your|these|those|existing|current|default)"
)
# Up to three words between the parts of a phrase, and nothing else: no punctuation,
# so a phrase does not run across clauses ("forget it, the previous rules of chess") or
# code ("# type: ignore[no-any-return] ... prompt:"). Views have single spaces.
_WORDS = r"(?: [\w'-]+){0,3}?"
_VERBS = (
    r"(?:ignore|disregard|forget|skip|bypass|override|overrule|abandon|drop|discard|neglect|"
    r"do not (?:follow|obey)|don'?t (?:follow|obey)|stop following)"
)

# (signal, weight, words one of which must occur, pattern), matched against the folded
# views of the text. The words let most text skip a pattern entirely. Patterns begin with
# a plain alternation (no \b) so re can jump between candidate first letters; that a
# match starts a word is checked afterwards (``_search``).
_SIGNALS: tuple[tuple[str, float, tuple[str, ...], re.Pattern[str]], ...] = (
    (
        "override_instructions",
        0.8,
        ("ignor", "disregard", "forget", "skip", "bypass", "overr", "abandon", "drop", "discard",
         "neglect", "not follow", "t follow", "not obey", "t obey", "stop follow"),
        re.compile(
            rf"{_VERBS}\b(?:{_WORDS} {_QUALIFIERS}\b{_WORDS} {_TARGETS}"
            rf"| (?:the |my |our )?{_TARGETS} (?:above|before|so far|you (?:were|have been) "
            rf"given))"
        ),
    ),
    (
        "ignore_above",
        0.6,
        ("ignore", "disregard", "forget"),
        re.compile(
            r"(?:ignore|disregard|forget) (?:all |everything |anything )?(?:of )?(?:the |that )?"
            r"(?:above|said above|written above|before this|you (?:were|have been) told)"
        ),
    ),
    (
        "new_instructions",
        0.45,
        ("instruction", "rules", "prompt", "directive", "from now on", "your "),
        re.compile(
            r"(?:new|updated|revised|real|actual|true|secret) (?:instructions?|rules|system "
            r"prompt|directives?)\s*(?::|-|are\b|is\b)"
            r"|from now on,? (?:you (?:are|will|must|shall|should)|act|respond|answer|behave)\b"
            r"|your (?:new|real|true) (?:role|task|goal|purpose|job|instructions?) (?:is|are)\b"
        ),
    ),
    (
        "reveal_system_prompt",
        0.6,
        ("prompt", "message", "instructions", "above", "rules"),
        re.compile(
            r"(?:reveal|show|print|display|output|repeat|recite|tell me|give me|share|leak|dump|"
            r"write out|expose|spell out)\b[^.\n?]{0,40}?(?<!into )(?<!to )(?<!in )(?<!from )"
            r"\b(?:your|the|its) (?:full |entire |complete |exact |original |initial |hidden |"
            r"secret )?(?:system prompt|system message|initial prompt|hidden (?:prompt|"
            r"instructions|rules)|pre-?prompt|instructions (?:you were given|above|verbatim)|"
            r"prompt above|developer (?:message|prompt|instructions)|(?:text|words|everything) "
            r"above)"
            r"|(?:reveal|show|print|display|output|repeat|recite|tell me|give me|leak|dump|"
            r"write out|expose|spell out)\b[^.\n?]{0,20}?\byour (?:instructions|rules|"
            r"guidelines|directives|prompt|configuration)\b"
            r"|what (?:is|are|was|were) your (?:system prompt|initial instructions|"
            r"original instructions|hidden (?:rules|instructions)|instructions\b)"
            r"|repeat (?:the |all )?(?:words|text|everything) (?:above|before)"
        ),
    ),
    (
        "jailbreak_persona",
        0.7,
        (" mode", "anything now", "unrestricted", "unfiltered", "uncensored", "amoral", "jailbr",
         "no rules", "no limits", "no restrictions", "no filters", "without"),
        re.compile(
            r"do anything now\b|(?:developer|god|jailbreak|jailbroken|unrestricted|"
            r"unfiltered|uncensored|evil|sudo|dan) mode\b"
            r"|(?:pretend|act|behave|role-?play|imagine|you are)\b[^.\n]{0,40}\b(?:unrestricted|"
            r"unfiltered|uncensored|amoral|jailbroken|no (?:rules|limits|restrictions|filters)|"
            r"without (?:any )?(?:rules|limits|restrictions|filters|guidelines))\b"
        ),
    ),
    ("jailbreak_word", 0.5, ("jailbr",), re.compile(r"jailbr(?:eak|oken|eaking)\b")),
    (
        "remove_restrictions",
        0.5,
        ("bound by", "free", "released", "without"),
        re.compile(
            r"(?:not bound by|free (?:of|from)|freed from|released from|without) (?:any |all |"
            r"your |the )?(?:restrictions|filters|limitations|censorship|content polic(?:y|ies)|"
            r"ethical guidelines|safety guidelines|rules|guidelines)\b"
        ),
    ),
    (
        # The same request in other languages (German, Spanish, French, Italian, Portuguese).
        "override_instructions",
        0.8,
        ("ignor", "vergiss", "olvida", "oublie", "dimentica", "esque"),
        re.compile(
            r"(?:ignorier\w*|vergiss) (?:alle |die |deine )?(?:vorherigen |bisherigen |obigen )?"
            r"(?:anweisungen|instruktionen|regeln|vorgaben)"
            r"|(?:ignora\w*|olvida\w*) (?:todas |todos )?(?:las |los |tus )?(?:instrucciones|"
            r"reglas|[óo]rdenes) (?:anteriores|previas)"
            r"|(?:ignore[zr]?|oublie[zr]?) (?:toutes )?(?:les |tes |vos )?(?:instructions|"
            r"consignes|r[èe]gles) (?:pr[ée]c[ée]dentes|ant[ée]rieures)"
            r"|(?:ignora|dimentica) (?:tutte )?(?:le )?(?:istruzioni|regole) precedenti"
            r"|(?:ignore|ignora|esque[çc]a) (?:todas )?(?:as )?(?:instru[çc][õo]es|regras) "
            r"anteriores"
        ),
    ),
    (
        "system_override",
        0.6,
        ("override",),
        re.compile(r"(?:system|admin|developer|root|security) override\b"),
    ),
    (
        "encoded_instructions",
        0.5,
        ("base64", "rot13", "hex", "binary", "morse"),
        re.compile(
            r"(?:decode|decrypt|translate|convert)\b[^.\n]{0,40}\b(?:base64|rot13|hex|binary|"
            r"morse)\b[^.\n]{0,60}\b(?:follow|execute|obey|do what|carry out|run)\b"
        ),
    ),
)  # fmt: skip


def _search(pattern: re.Pattern[str], text: str) -> bool:
    """Whether ``pattern`` matches ``text`` somewhere at the start of a word."""
    return any(m.start() == 0 or not text[m.start() - 1].isalnum() for m in pattern.finditer(text))


# Matched on the original text (case or markup matters); the words are lower-case.
_RAW_SIGNALS: tuple[tuple[str, float, tuple[str, ...], re.Pattern[str]], ...] = (
    (
        "role_tags",
        0.75,
        ("<|", "inst]", "<<sys", "system>", "sys>"),
        re.compile(
            r"<\|(?:im_start|im_end|system|user|assistant|endoftext|eot_id|start_header_id|"
            r"end_header_id|begin_of_text)\|>|\[/?INST\]|<</?SYS>>|</?\s*(?:system|sys)\s*>",
            re.IGNORECASE,
        ),
    ),
    (
        # "### System:", "[system]:", "**Developer note**:" at the start of a line
        "fake_system_header",
        0.55,
        ("system", "developer", "admin"),
        re.compile(
            r"^[ \t]*(?:#{1,6}|\*\*|\[|-{2,}|={2,})[ \t]*(?:system|developer|admin)"
            r"(?: (?:prompt|message|instructions?|override|note|update))?[ \t]*(?:\]|\*\*)?[ \t]*:",
            re.IGNORECASE | re.MULTILINE,
        ),
    ),
    (
        # a plain "System:" line
        "system_line",
        0.35,
        ("system", "developer"),
        re.compile(
            r"^[ \t]*(?:system|developer)(?: (?:prompt|message|instructions?|override|note))?"
            r"[ \t]*:",
            re.IGNORECASE | re.MULTILINE,
        ),
    ),
    (
        "fake_transcript",
        0.15,
        ("assistant", "human", "ai"),
        re.compile(r"^[ \t]*(?:assistant|human|ai)[ \t]*:", re.IGNORECASE | re.MULTILINE),
    ),
    ("dan_persona", 0.5, ("dan",), re.compile(r"\bDAN\b")),
)

_ZERO_WIDTH = "\u200b\u200c\u200d\u2060\ufeff\u180e\u00ad"
_BIDI = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
_INVISIBLE = re.compile(f"[{_ZERO_WIDTH}{_BIDI}\U000e0000-\U000e007f]+")
_TAG_CHARS = re.compile("[\U000e0000-\U000e007f]")
_ZERO_WIDTH_IN_WORD = re.compile(f"\\w[{_ZERO_WIDTH}]+\\w")
# Leetspeak undone on UTF-8 bytes (multi-byte sequences never contain ASCII bytes).
_LEET = bytes.maketrans(b"013457@$", b"oieastas")
_SPACED_LETTERS = re.compile(r"[a-z](?<![a-z][a-z])(?:[ .\-_*][a-z](?![a-z])){3,}")
_SPACED_HINT = re.compile(r"[ .\-_*][a-z][ .\-_*][a-z][ .\-_*][a-z][ .\-_*]")
_BASE64 = re.compile(r"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{24,}={0,2}")


@dataclass(frozen=True)
class InjectionReport:
    score: float  # 0 (nothing suspicious) .. 1
    signals: tuple[str, ...]  # names of the signals that fired, strongest first


def _views(text: str) -> list[str]:
    """The text as the signals see it: folded; then, around the places where that changes
    anything, with leetspeak and letter spacing undone ("1gn0re", "i g n o r e")."""
    if text.isascii():
        folded = text.lower()
    else:
        folded = _INVISIBLE.sub("", unicodedata.normalize("NFKC", text)).casefold()
    folded = " ".join(folded.split())
    views = [folded]
    # Only the surroundings of mixed letter/digit words and spaced-out letters are redone,
    # so a long text is not scanned three times.
    leet_at = [m.start() for m in _LEET_MIXED.finditer(folded)]
    if leet_at:
        views.append(_LEET_SPLIT.join(
            w.encode().translate(_LEET).decode() for w in _windows(folded, leet_at)
        ))  # fmt: skip
    if _SPACED_HINT.search(folded):
        spaced_at = [m.start() for m in _SPACED_LETTERS.finditer(folded)]
        if spaced_at:
            views.append(_LEET_SPLIT.join(
                _SPACED_LETTERS.sub(lambda m: _SPACERS.sub("", m.group()), w)
                for w in _windows(folded, spaced_at)
            ))  # fmt: skip
    return views


def _windows(text: str, positions: list[int], reach: int = 120) -> list[str]:
    """The stretches of ``text`` within ``reach`` of any position, merged."""
    spans: list[list[int]] = []
    for p in positions:
        start, end = max(0, p - reach), p + reach
        if spans and start <= spans[-1][1]:
            spans[-1][1] = end
        else:
            spans.append([start, end])
    return [text[a:b] for a, b in spans]


_LEET_MIXED = re.compile(r"[013457@$](?:(?<=[a-z].)|(?=[a-z]))")
_LEET_SPLIT = " .\n"  # between windows: no phrase runs across it
_SPACERS = re.compile(r"[ .\-_*]")


def _decoded_payloads(text: str) -> Iterable[str]:
    for n, m in enumerate(_BASE64.finditer(text)):
        if n >= 8:
            return
        blob = m.group()[:8192]
        try:
            raw = base64.b64decode(blob + "=" * (-len(blob) % 4), validate=True)
            decoded = raw.decode("utf-8")
        except (binascii.Error, ValueError):
            continue
        if decoded and sum(c.isprintable() or c.isspace() for c in decoded) / len(decoded) > 0.95:
            yield decoded


def score_injection(text: str, *, _depth: int = 0) -> InjectionReport:
    """The heuristic injection score of ``text`` and the signals behind it."""
    fired: dict[str, float] = {}
    for view in _views(text):
        for name, weight, words, pattern in _SIGNALS:
            if name not in fired and any(w in view for w in words) and _search(pattern, view):
                fired[name] = weight
    lowered = text.lower()
    for name, weight, words, pattern in _RAW_SIGNALS:
        if any(w in lowered for w in words) and pattern.search(text):
            fired[name] = weight
    if not text.isascii():
        if _TAG_CHARS.search(text):
            fired["hidden_tag_characters"] = 0.7
        if _ZERO_WIDTH_IN_WORD.search(text):
            fired["zero_width_characters"] = 0.3
        if any(c in text for c in _BIDI):
            fired["bidi_controls"] = 0.3
    if _depth == 0 and len(text) >= 24:
        for decoded in _decoded_payloads(text):
            inner = score_injection(decoded, _depth=1)
            if inner.signals:
                fired["base64_payload"] = 0.5
                for signal in inner.signals:
                    fired.setdefault(signal, _weight(signal))
    remaining = 1.0
    for weight in fired.values():
        remaining *= 1.0 - weight
    signals = tuple(sorted(fired, key=lambda s: (-fired[s], s)))
    return InjectionReport(score=round(1.0 - remaining, 4), signals=signals)


def _weight(signal: str) -> float:
    for name, weight, _words, _pattern in (*_SIGNALS, *_RAW_SIGNALS):
        if name == signal:
            return weight
    return 0.3


class InjectionGuardrail(Guardrail):
    """Flags or blocks text whose injection score reaches ``threshold``.

    ``classifier`` (optional) maps text to a probability of injection; the larger
    of it and the heuristic score is compared with the threshold.
    """

    type_name = "injection"
    actions = frozenset({Action.BLOCK, Action.FLAG})
    default_action = Action.BLOCK

    def __init__(
        self,
        name: str,
        *,
        threshold: float = 0.5,
        classifier: Classifier | None = None,
        action: Action | str | None = None,
        stages: Iterable[Stage | str] | None = (Stage.INPUT,),
        roles: Iterable[str] | None = None,
    ):
        super().__init__(name, action=action, stages=stages, roles=roles)
        if not 0.0 < threshold <= 1.0:
            raise ValueError("threshold must be above 0 and at most 1")
        self.threshold = threshold
        self.classifier = classifier

    @classmethod
    def from_options(cls, name: str, options: Options) -> Guardrail:
        common = options.common()
        common.setdefault("stages", (Stage.INPUT,))
        return cls(
            name,
            threshold=options.number("threshold", default=0.5, minimum=0.0, maximum=1.0),
            classifier=options.function("classifier"),
            **common,
        )

    def report(self, text: str) -> InjectionReport:
        report = score_injection(text)
        if self.classifier is None:
            return report
        probability = float(self.classifier(text))
        if probability > report.score:
            signals = ("classifier", *report.signals)
            return InjectionReport(score=round(probability, 4), signals=signals)
        return report

    def check(self, text: str) -> list[Match]:
        report = self.report(text)
        if report.score < self.threshold:
            return []
        return [
            Match(
                "prompt_injection",
                None,
                detail="+".join(report.signals[:3]),
                score=report.score,
            )
        ]
