"""Personal data detectors: e-mail, phone, payment card, IBAN, IP address.

Each detector is a pattern followed by validation (a check digit, a country
length table, ``ipaddress``, the shape of the separators), because a pattern
alone flags order numbers, dates and version strings. National identity numbers
live in ``national_ids``, credentials in ``credentials``; ``PiiGuardrail``
combines them all.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

from powertrain.guard.base import Action, Guardrail, Match, Stage
from powertrain.guard.checksums import IBAN_LENGTHS, iban_valid, luhn_valid

if TYPE_CHECKING:
    from powertrain.guard.config import Options

Detector = Callable[[str], Iterable[Match]]

# ---------------------------------------------------------------------------- e-mail

# Patterns start with a character class and check what precedes it just after: re can
# then skip ahead to candidate characters instead of trying the lookbehind everywhere.
_EMAIL = re.compile(
    r"[\w%+\-](?<![\w.%+\-][\w%+\-])(?:[\w.%+'\-]{0,62}[\w%+\-])?"
    r"@(?:[^\W_](?:[\w\-]{0,61}[^\W_])?\.)+([^\W\d_]{2,63})"
    r"(?![\w\-]|\.[^\W_])"
)
# file@2x.png is an image, not a mailbox.
_NOT_TLDS = frozenset({"png", "jpg", "jpeg", "gif", "svg", "webp", "bmp", "ico", "tif", "tiff"})


def find_emails(text: str) -> Iterator[Match]:
    if "@" not in text:
        return
    for m in _EMAIL.finditer(text):
        if m.group(1).lower() not in _NOT_TLDS:
            yield Match("email", m.span())


# ---------------------------------------------------------------------------- phone

# Country calling codes in use (ITU-T E.164); a "+" number must start with one.
_CALLING_CODES = frozenset(
    {"1", "7", "20", "27", "30", "31", "32", "33", "34", "36", "39", "40", "41", "43", "44"}
    | {"45", "46", "47", "48", "49", "51", "52", "53", "54", "55", "56", "57", "58", "60"}
    | {"61", "62", "63", "64", "65", "66", "81", "82", "84", "86", "90", "91", "92", "93"}
    | {"94", "95", "98", "211", "212", "213", "216", "218", "290", "291", "297", "298", "299"}
    | {str(n) for n in range(220, 270) if n != 259}
    | {str(n) for n in range(350, 360)}
    | {str(n) for n in range(370, 390) if n not in (379, 384, 388)}
    | {"420", "421", "423", "850", "852", "853", "855", "856", "880", "886"}
    | {str(n) for n in range(500, 510)}
    | {str(n) for n in range(590, 600)}
    | {str(n) for n in range(670, 693) if n not in (671, 684)}
    | {"800", "808", "870", "878", "881", "882", "883", "888"}
    | {str(n) for n in range(960, 969)}
    | {str(n) for n in range(970, 980) if n != 978}
    | {"992", "993", "994", "995", "996", "998"}
)

# Not inside a word, a number, a version, a price or an id (checked after the first char).
_NOT_AFTER = r"[\w+.\-/$€£#]"
_RIGHT = r"(?![\w%]|[.\-/:]\d)"  # not followed by more of a number, a time, a percentage

_PHONE_INTL = re.compile(
    rf"[+0](?<!{_NOT_AFTER}[+0])(?:(?<=\+)|(?<=0)0)\d{{1,15}}"
    rf"(?:[ .\-]?\(\d{{1,5}}\)\d{{0,8}})?(?:[ .\-]\d{{1,8}}){{0,7}}{_RIGHT}"
)
# North American: 415-555-0100, 1-800-555-0100 (groups 1 and 2 are the separators) ...
_PHONE_NANP = re.compile(
    rf"\d(?<!{_NOT_AFTER}\d)(?:(?<=1)[ .\-]?\d{{3}}|\d{{2}})([ .\-])\d{{3}}([ .\-])\d{{4}}{_RIGHT}"
)
# ... and (415) 555-0100, 1 (800) 555-0100.
_PHONE_NANP_PARENS = re.compile(
    rf"[1(](?<!{_NOT_AFTER}[1(])(?:(?<=1)[ .\-]?\(|(?<=\())\d{{3}}\)[ .\-]?\d{{3}}[ .\-]\d{{4}}"
    + _RIGHT
)
# National numbers written with a trunk "0": 020 7946 0958, 06 12 34 56 78, 030/1234567.
_PHONE_TRUNK = re.compile(
    rf"[(0](?<!{_NOT_AFTER}[(0])(?:(?<=\()0\d{{1,4}}\)|(?<=0)\d{{1,4}})"
    rf"(?: ?[ .\-/] ?\d{{2,8}}){{1,5}}{_RIGHT}"
)
# With a phone word just before it, any 7-15 digit number, separated or not.
_PHONE_ANY = re.compile(
    rf"[\d(](?<!{_NOT_AFTER}[\d(])\d{{0,15}}\)?(?:[ .\-]\d{{1,8}}){{0,5}}{_RIGHT}"
)
_PHONE_WORDS = re.compile(
    r"(?i)(?:\b(?:phone|tel|telephone|mobile|cell|cellphone|fax|call|ring|text me|sms|"
    r"whatsapp|dial|hotline|helpline|mob|ph|t[ée]l[ée]phone|telefon|telefono|tel[ée]fono|"
    r"handy|portable|celular|m[óo]vil|(?:my|mobile|cell|home|work) number|"
    r"reach me|contact)\b|\u7535\u8bdd)"
    r"[^\d\n]{0,24}$"
)
_NOT_PHONE_WORDS = re.compile(
    r"(?i)\b(?:order|invoice|ref|reference|ticket|tracking|account|acct|sku|isbn|issn|"
    r"serial|case|transaction|txn|confirmation|booking|policy|member|customer|id|no|nr|"
    r"version|ver|v|build|release|patent|zip|postcode|part|model|item|pin)\b"
    r"[\s.:#\-]{0,4}$"
)
_DATE_INSIDE = re.compile(
    r"\b(?:\d{1,2}[./\-]\d{1,2}[./\-](?:19|20)\d{2}|(?:19|20)\d{2}[./\-]\d{1,2}[./\-]\d{1,2})\b"
)


def _separators_consistent(candidate: str, *, international: bool = False) -> bool:
    """One separator throughout, except around the first group or two (a country code and
    an area code are often set off differently: +1 (415) 555-0100, 030/1234 5678). After a
    "+", spaces may mix with one other separator (+7 495 123-45-67, +55 11 91234-5678)."""
    skip = 2 if "(" in candidate else 1
    plain = candidate.lstrip("+").replace("(", "").replace(")", " ")
    kinds = {s.strip() or " " for s in re.findall(r"\D+", plain)[skip:]}
    if international:
        kinds.discard(" ")
    return len(kinds) <= 1


# Cheap substring test before the word patterns run at all.
_PHONE_WORD_HINTS = (
    "phone", "tel", "mobile", "cell", "fax", "call", "ring", "text me", "sms", "whatsapp", "dial",
    "line", "mob", "ph", "handy", "portable", "celular", "vil", "number", "reach me",
    "contact", "\u7535\u8bdd",
)  # fmt: skip


def _phone_context(text: str, start: int) -> tuple[bool, bool]:
    before = text[max(0, start - 40) : start]
    return bool(_PHONE_WORDS.search(before)), bool(_NOT_PHONE_WORDS.search(before))


def find_phones(text: str) -> Iterator[Match]:
    found: list[tuple[int, int]] = []

    def take(start: int, end: int) -> None:
        if not any(s < end and start < e for s, e in found):
            found.append((start, end))

    for m in _PHONE_INTL.finditer(text):
        candidate = m.group()
        digits = re.sub(r"\D", "", candidate)
        if candidate.startswith("00"):
            digits = digits[2:]
        if not 8 <= len(digits) <= 15 or _DATE_INSIDE.search(candidate):
            continue
        if not any(digits[:n] in _CALLING_CODES for n in (1, 2, 3)):
            continue
        if not _separators_consistent(candidate, international=True):
            continue
        if candidate.startswith("00") and _phone_context(text, m.start()) != (True, False):
            continue  # 0044 20 7946 0958 is a phone; 0012345678 is usually an id
        take(*m.span())
    for m in (*_PHONE_NANP.finditer(text), *_PHONE_NANP_PARENS.finditer(text)):
        if m.re is _PHONE_NANP:
            sep1, sep2 = m.group(1), m.group(2)
            if sep1 != sep2 and not (sep1 == " " and sep2 == "-"):
                continue
        phone_words, other_words = _phone_context(text, m.start())
        if other_words and not phone_words:
            continue
        take(*m.span())
    for m in _PHONE_TRUNK.finditer(text):
        candidate = m.group()
        digits = re.sub(r"\D", "", candidate)
        if not 9 <= len(digits) <= 12 or digits.startswith("00"):
            continue
        if _DATE_INSIDE.search(candidate) or not _separators_consistent(candidate):
            continue
        phone_words, other_words = _phone_context(text, m.start())
        if other_words and not phone_words:
            continue
        take(*m.span())
    lowered = text.lower()
    if not any(hint in lowered for hint in _PHONE_WORD_HINTS):
        yield from (Match("phone", span) for span in found)
        return
    for m in _PHONE_ANY.finditer(text):
        candidate = m.group()
        digits = re.sub(r"\D", "", candidate)
        if not 7 <= len(digits) <= 15 or _DATE_INSIDE.search(candidate):
            continue
        if not _separators_consistent(candidate):
            continue
        if _phone_context(text, m.start()) == (True, False):
            take(*m.span())
    yield from (Match("phone", span) for span in found)


# ---------------------------------------------------------------------------- payment card

# Grouped digits that run on (another group of four before or after) are some other
# number; an expiry date or a CVV after the card is fine.
_CARD = re.compile(
    r"\d(?<![\w.\-]\d)(?<!\d[ \-]\d)(?:"
    r"\d{12,18}"
    r"|\d{3}([ \-])\d{4}\1\d{4}\1\d{1,7}"
    r"|\d{3}([ \-])\d{4}\2\d{4}\2\d{4}\2\d{1,3}"
    r"|\d{3}([ \-])\d{6}\3\d{4,5}"
    r")(?![\w\-]|[.,]\d|[ \-]\d{4}\b)"
)


def card_brand(digits: str) -> str | None:
    """The issuer family a number's prefix (IIN) and length belong to, if any."""
    n = len(digits)
    two, four, six = int(digits[:2]), int(digits[:4]), int(digits[:6])
    if digits[0] == "4" and n in (13, 16, 19):
        return "visa"
    if (51 <= two <= 55 or 2221 <= four <= 2720) and n == 16:
        return "mastercard"
    if two in (34, 37) and n == 15:
        return "amex"
    if (four == 6011 or 644 <= int(digits[:3]) <= 649 or two == 65) and 16 <= n <= 19:
        return "discover"
    if 622126 <= six <= 622925 or (two == 62 and 16 <= n <= 19):
        return "unionpay"
    if 3528 <= four <= 3589 and 16 <= n <= 19:
        return "jcb"
    if (300 <= int(digits[:3]) <= 305 or two in (36, 38, 39)) and 14 <= n <= 19:
        return "diners"
    if 2200 <= four <= 2204 and 16 <= n <= 19:
        return "mir"
    if (two in (50, 56, 57, 58) or 60 <= two <= 69) and 12 <= n <= 19:
        return "maestro"
    if two in (81, 82) and n == 16:
        return "rupay"
    return None


# "Order #4111111111111111": a number called something else is that, unless the text
# also calls it a card.
_NOT_CARD_WORDS = re.compile(
    r"(?i)\b(?:order|invoice|ref|reference|tracking|ticket|account|acct|transaction|txn|"
    r"confirmation|booking|serial|sku|isbn|ean|upc|id|no|nr)\b[\s.:#\-]{0,4}$"
)
_CARD_WORDS = re.compile(
    r"(?i)\b(?:card|visa|master ?card|amex|american express|discover|credit|debit|cc|pan)\b"
)


def find_cards(text: str) -> Iterator[Match]:
    for m in _CARD.finditer(text):
        digits = re.sub(r"\D", "", m.group())
        if not 13 <= len(digits) <= 19 or len(set(digits)) < 2:
            continue
        brand = card_brand(digits)
        if brand is None or not luhn_valid(digits):
            continue
        before = text[max(0, m.start() - 40) : m.start()]
        if _NOT_CARD_WORDS.search(before) and not _CARD_WORDS.search(before):
            continue
        yield Match("card", m.span(), detail=brand)


# ---------------------------------------------------------------------------- IBAN

# Two letters, two check digits, then 11-30 letters/digits, optionally in groups of 4.
_IBAN = re.compile(
    r"(?i)[A-Z](?<![\w\-][A-Z])[A-Z]\d{2}"
    r"(?:[A-Z0-9]{11,30}|(?: [A-Z0-9]{4}){2,7}(?: [A-Z0-9]{1,4})?)"
    r"(?![\w\-])"
)


def find_ibans(text: str) -> Iterator[Match]:
    for m in _IBAN.finditer(text):
        candidate = m.group()
        compact = candidate.replace(" ", "").upper()
        if iban_valid(compact):
            yield Match("iban", m.span(), detail=compact[:2].lower())
            continue
        # The pattern may have run on into the next word group; cut at the country length.
        expected = IBAN_LENGTHS.get(compact[:2])
        if expected is None or len(compact) <= expected:
            continue
        seen, end = 0, m.start()
        for i, char in enumerate(candidate):
            if char != " ":
                seen += 1
            if seen == expected:
                end = m.start() + i + 1
                break
        if text[end : end + 1].isalnum():
            continue
        if iban_valid(compact[:expected]):
            yield Match("iban", (m.start(), end), detail=compact[:2].lower())


# ---------------------------------------------------------------------------- IP address

_IPV4 = re.compile(r"\d(?<![\w.]\d)\d{0,2}\.(?:\d{1,3}\.){2}\d{1,3}(?![\w]|\.\d|-[A-Za-z])")
_IPV6 = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:(?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]{1,4})?"
    r"(?:%[\w.]+)?(?![\w:]|\.\d)"
)
# "version 1.2.3.4", "section 4.1.2.3": dotted numbers that are not addresses.
_NOT_IP_WORDS = re.compile(
    r"(?i)(?:\b(?:v|ver|version|versions|release|build|firmware|sdk|api|python|node|java|"
    r"section|sections|chapter|clause|article|art|rule|step|figure|fig|table|appendix|"
    r"paragraph|para|oid|isbn|item|part|§)|§)[\s.:#=]{0,3}(?:is\s+|of\s+)?$"
)
_NOT_IP_AFTER = re.compile(r"(?i)\s?(?:release|build|beta|alpha|rc\d*|patch|update|version)\b")


def find_ips(text: str) -> Iterator[Match]:
    if "." in text:
        for m in _IPV4.finditer(text):
            try:
                ipaddress.IPv4Address(m.group())
            except ValueError:
                continue
            if _NOT_IP_WORDS.search(text[max(0, m.start() - 20) : m.start()]):
                continue
            if _NOT_IP_AFTER.match(text, m.end()):
                continue
            yield Match("ip", m.span(), detail="ipv4")
    if "::" in text or text.count(":") >= 7:
        for m in _IPV6.finditer(text):
            candidate = m.group()
            try:
                ipaddress.IPv6Address(candidate.split("%", 1)[0])
            except ValueError:
                continue
            groups = [g for g in re.split(r"[:%]", candidate) if g]
            # "a::b" (C++ scope) and "1:2:3:4:5:6:7:8" parse too; real addresses have
            # digits and at least one group longer than two characters.
            if not any(c.isdigit() for c in candidate) or all(len(g) < 3 for g in groups):
                continue
            yield Match("ip", m.span(), detail="ipv6")


# ---------------------------------------------------------------------------- the guardrail

# When two detectors claim overlapping text, the earlier category wins: a card number
# is not also a phone number, an e-mail's user part is not also a secret.
PRIORITY = ("secret", "card", "iban", "national_id", "email", "ip", "phone")


def _detectors() -> dict[str, Detector]:
    from powertrain.guard.credentials import find_secrets
    from powertrain.guard.national_ids import find_national_ids

    return {
        "secret": find_secrets,
        "card": find_cards,
        "iban": find_ibans,
        "national_id": find_national_ids,
        "email": find_emails,
        "ip": find_ips,
        "phone": find_phones,
    }


CATEGORIES = frozenset(PRIORITY)


def resolve_overlaps(matches: Iterable[Match], priority: Sequence[str]) -> list[Match]:
    """Keep non-overlapping matches: higher priority first, then longer, then earlier."""
    rank = {c: i for i, c in enumerate(priority)}

    def key(m: Match) -> tuple[int, int, int]:
        start, end = m.span or (0, 0)
        return (rank.get(m.category, len(rank)), start - end, start)

    kept: list[Match] = []
    taken: list[tuple[int, int]] = []
    for m in sorted(matches, key=key):
        start, end = m.span or (0, 0)
        if any(s < end and start < e for s, e in taken):
            continue
        kept.append(m)
        taken.append((start, end))
    return sorted(kept, key=lambda m: (m.span or (0, 0))[0])


def find_pii(text: str, categories: Iterable[str] = CATEGORIES) -> list[Match]:
    """Every personal-data match in ``text`` for the given categories, non-overlapping."""
    detectors = _detectors()
    wanted = set(categories)
    found: list[Match] = []
    for category in PRIORITY:
        if category in wanted:
            found.extend(detectors[category](text))
    return resolve_overlaps(found, PRIORITY)


class PiiGuardrail(Guardrail):
    """Personal data and secrets: e-mail, phone, card, IBAN, national ids, IPs, secrets."""

    type_name = "pii"
    default_action = Action.REDACT
    streamable = True

    def __init__(
        self,
        name: str,
        *,
        categories: Iterable[str] | None = None,
        allow: Iterable[str] = (),
        action: Action | str | None = None,
        stages: Iterable[Stage | str] | None = None,
        roles: Iterable[str] | None = None,
    ):
        super().__init__(name, action=action, stages=stages, roles=roles)
        chosen = frozenset(categories) if categories is not None else CATEGORIES
        unknown = chosen - CATEGORIES
        if unknown:
            raise ValueError(
                f"unknown categories {sorted(unknown)} (known: {', '.join(sorted(CATEGORIES))})"
            )
        self.categories = chosen
        self.allow = frozenset(_allow_key(v) for v in allow)
        all_detectors = _detectors()
        self._detectors = [(c, all_detectors[c]) for c in PRIORITY if c in chosen]

    @classmethod
    def from_options(cls, name: str, options: Options) -> Guardrail:
        return cls(
            name,
            categories=options.str_list("categories", default=None, choices=CATEGORIES),
            allow=options.str_list("allow", default=[]) or [],
            **options.common(),
        )

    def check(self, text: str) -> list[Match]:
        found: list[Match] = []
        for _category, detect in self._detectors:
            found.extend(detect(text))
        if self.allow:
            found = [
                m
                for m in found
                if m.span is None or _allow_key(text[slice(*m.span)]) not in self.allow
            ]
        return resolve_overlaps(found, PRIORITY)


def _allow_key(value: str) -> str:
    return "".join(value.split()).casefold()
