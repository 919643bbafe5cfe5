"""National identity numbers, each validated by its own rules.

Formats with a distinctive shape (SSN ``123-45-6789``, a NINO, a DNI letter, an
Aadhaar in three groups of four, a French NIR, an Italian fiscal code) are
found anywhere. Bare digit runs that could be anything (a 9-digit BSN, an
11-digit German tax id, an unseparated SSN or Aadhaar) are only taken when a
word naming the identifier comes just before them, because even a check digit
lets one random number in ten (or eleven) through.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from powertrain.guard.base import Match
from powertrain.guard.checksums import (
    de_tax_id_valid,
    es_dni_valid,
    fr_nir_valid,
    it_codice_fiscale_valid,
    nl_bsn_valid,
    uk_nino_valid,
    us_ssn_valid,
    verhoeff_valid,
)

# Each pattern starts with a character class and then checks the character before it
# (so re skips quickly to candidates): not inside a word, a longer number or a version.
_R = r"(?![\w\-]|[.,/:]\d)"

_SSN = re.compile(r"(\d(?<![\w\-.]\d)\d\d)([- ])(\d{2})\2(\d{4})" + _R)
# Lettered ids are found from their first digit (a letter-first pattern would be tried at
# every letter of the text); the letters before it are checked by a lookbehind.
_NINO = re.compile(r"\d(?:(?<=[A-Za-z]{2}\d)\d{5}|(?<=[A-Za-z]{2} \d)\d \d\d \d\d )[A-Da-d](?!\w)")
_AADHAAR = re.compile(r"([2-9](?<![\w\-.][2-9])\d{3})([ \-])(\d{4})\2(\d{4})" + _R)
_DNI = re.compile(r"(\d(?<![\w\-]\d)\d{7})[ \-]?([A-Za-z])(?!\w)")
_NIE = re.compile(r"\d(?:(?<=[XYZxyz]\d)|(?<=[XYZxyz][ \-]\d))(\d{6})[ \-]?([A-Za-z])(?!\w)")
_NIR = re.compile(
    r"(?i)([1-478](?<![\w\-][1-478])) ?(\d{2}) ?(\d{2}) ?(\d{2}|2[AB]) ?(\d{3}) ?(\d{3}) ?"
    r"(\d{2})(?!\w)"
)
_CODICE_FISCALE = re.compile(
    r"(?i)\d(?<=[A-Z]{6}\d)[\dLMNP-V][A-EHLMPR-T][\dLMNP-V]{2}[A-Z][\dLMNP-V]{3}[A-Z](?!\w)"
)

# Bare numbers, taken only after a word that names them.
_DIGITS_9 = re.compile(
    r"\d(?<![\w\-.]\d)(?:\d{8}|\d\d([ \-])\d{2}\1\d{4}|\d{3}\.\d{2}\.\d{3})" + _R
)
_DIGITS_11 = re.compile(r"\d(?<![\w\-.]\d)(?:\d{10}|\d [\d]{3} \d{3} \d{3})" + _R)
_DIGITS_12 = re.compile(r"[2-9](?<![\w\-.][2-9])\d{11}" + _R)
# Words that must appear somewhere for the bare-number patterns to run at all.
_ID_WORD_HINTS = (
    "ssn",
    "social sec",
    "soc",
    "bsn",
    "sofi",
    "steuer",
    "idnr",
    "identifikation",
    "tax id",
    "aadha",
    "uid",
)

_SSN_WORDS = re.compile(r"(?i)\b(?:ssn|social security(?: number| no\.?)?|soc\.? sec\.?)\W{0,12}$")
_BSN_WORDS = re.compile(r"(?i)\b(?:bsn|burgerservicenummer|sofi-?nummer|sofi)\W{0,12}$")
_DE_TAX_WORDS = re.compile(
    r"(?i)(?:\b(?:steuer-?id(?:entifikationsnummer)?|steuerliche identifikationsnummer|"
    r"identifikationsnummer|idnr|tax id(?:entification number)?)\b)\W{0,12}$"
)
_AADHAAR_WORDS = re.compile(r"(?i)\b(?:aadhaa?r|uidai|uid)(?: (?:no\.?|number|card))?\W{0,12}$")


def _after(words: re.Pattern[str], text: str, start: int) -> bool:
    return words.search(text[max(0, start - 48) : start]) is not None


def _digits(value: str) -> str:
    return re.sub(r"\D", "", value)


def find_national_ids(text: str) -> Iterator[Match]:
    yield from _numbers(text)
    yield from _lettered(text)


def _numbers(text: str) -> Iterator[Match]:
    for m in _SSN.finditer(text):
        if us_ssn_valid(m.group(1), m.group(3), m.group(4)):
            yield Match("national_id", m.span(), detail="us_ssn")
    for m in _AADHAAR.finditer(text):
        if verhoeff_valid(_digits(m.group())):
            yield Match("national_id", m.span(), detail="in_aadhaar")
    for m in _NIR.finditer(text):
        body = "".join(m.group(*range(1, 7)))
        if m.group(3) in ("00", "13", "14", "15", "16", "17", "18", "19"):
            continue  # not a month, nor one of the codes used when it is unknown
        if fr_nir_valid(body, m.group(7)):
            yield Match("national_id", m.span(), detail="fr_nir")
    lowered = text.lower()
    if not any(hint in lowered for hint in _ID_WORD_HINTS):
        return
    for m in _DIGITS_9.finditer(text):
        digits = _digits(m.group())
        if _after(_SSN_WORDS, text, m.start()) and m.group(1) is None:
            if us_ssn_valid(digits[:3], digits[3:5], digits[5:]):
                yield Match("national_id", m.span(), detail="us_ssn")
        elif _after(_BSN_WORDS, text, m.start()) and nl_bsn_valid(digits):
            yield Match("national_id", m.span(), detail="nl_bsn")
    for m in _DIGITS_11.finditer(text):
        if _after(_DE_TAX_WORDS, text, m.start()) and de_tax_id_valid(_digits(m.group())):
            yield Match("national_id", m.span(), detail="de_tax_id")
    for m in _DIGITS_12.finditer(text):
        if _after(_AADHAAR_WORDS, text, m.start()) and verhoeff_valid(m.group()):
            yield Match("national_id", m.span(), detail="in_aadhaar")


def _lettered(text: str) -> Iterator[Match]:
    for m in _NINO.finditer(text):
        start = m.start() - (3 if text[m.start() - 1] == " " else 2)
        if _word_before(text, start) or not uk_nino_valid(text[start : start + 2]):
            continue
        yield Match("national_id", (start, m.end()), detail="uk_nino")
    for m in _DNI.finditer(text):
        if es_dni_valid(m.group(1), m.group(2)):
            yield Match("national_id", m.span(), detail="es_dni")
    for m in _NIE.finditer(text):
        start = m.start() - (2 if text[m.start() - 1] in " -" else 1)
        number = text[start] + text[m.start()] + m.group(1)
        if not _word_before(text, start) and es_dni_valid(number, m.group(2)):
            yield Match("national_id", (start, m.end()), detail="es_nie")
    for m in _CODICE_FISCALE.finditer(text):
        start = m.start() - 6
        if not _word_before(text, start) and it_codice_fiscale_valid(text[start : m.end()]):
            yield Match("national_id", (start, m.end()), detail="it_codice_fiscale")


def _word_before(text: str, start: int) -> bool:
    return start > 0 and (text[start - 1].isalnum() or text[start - 1] == "_")
