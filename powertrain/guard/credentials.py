"""Secrets: provider API keys by their documented prefixes, JWTs, private keys, and
credentials assigned to a name that says what they are.

Prefixed keys are precise on their own. A generic ``password = ...`` is only
taken when the value looks random (Shannon entropy and a mix of character
classes), so ``token = get_token()`` or ``password: <your password>`` are left
alone.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections import Counter
from collections.abc import Iterator

from powertrain.guard.base import Match

_E = r"(?![\w\-])"  # a key ends a token

# (detail, a literal every match contains, pattern). Patterns start with their literal
# prefix and only then check that it starts a token, so re can search for the literal.
_PREFIXED: tuple[tuple[str, str, re.Pattern[str]], ...] = (
    ("anthropic_key", "sk-ant-", re.compile(r"sk-ant-(?<![\w\-]sk-ant-)[A-Za-z0-9_\-]{20,}" + _E)),
    ("openai_key", "sk-", re.compile(r"sk-(?<![\w\-]sk-)(?!ant-)(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,}" + _E)),
    ("aws_access_key_id", "A", re.compile(r"A(?<![A-Za-z0-9]A)(?:KIA|SIA)[A-Z0-9]{16}(?![A-Za-z0-9])")),
    ("github_token", "g", re.compile(r"g(?<![\w\-]g)(?:h[pousr]_[A-Za-z0-9]{30,255}|ithub_pat_\w{22,255})" + _E)),
    ("slack_token", "xox", re.compile(r"xox(?<![\w\-]xox)[abprse]-[A-Za-z0-9\-]{10,}" + _E)),
    ("slack_webhook", "hooks.slack.com", re.compile(r"https://hooks\.slack\.com/services/[A-Za-z0-9_/]{20,}")),
    ("google_api_key", "AIza", re.compile(r"AIza(?<![\w\-]AIza)[0-9A-Za-z_\-]{35}" + _E)),
    ("stripe_key", "k_", re.compile(r"[sr]k_(?<![\w\-][sr]k_)(?:live|test)_[0-9A-Za-z]{16,}" + _E)),
    ("huggingface_token", "hf_", re.compile(r"hf_(?<![\w\-]hf_)[A-Za-z]{34,}" + _E)),
    ("gitlab_token", "glpat-", re.compile(r"glpat-(?<![\w\-]glpat-)[A-Za-z0-9_\-]{20,}" + _E)),
    ("npm_token", "npm_", re.compile(r"npm_(?<![\w\-]npm_)[A-Za-z0-9]{36}" + _E)),
    ("sendgrid_key", "SG.", re.compile(r"SG\.(?<![\w\-]SG\.)[A-Za-z0-9_\-]{22}\.[A-Za-z0-9_\-]{43}" + _E)),
)  # fmt: skip

_JWT = re.compile(
    r"eyJ(?<![\w\-.]eyJ)([A-Za-z0-9_\-]{8,})\.(eyJ[A-Za-z0-9_\-]{4,})\.([A-Za-z0-9_\-]*)"
)
_PEM = re.compile(
    r"-----BEGIN ((?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?)-----"
    # Unterminated (cut off, or still streaming): the base64 lines and headers that follow.
    r"(?:[\s\S]*?-----END \1-----|(?:\s*(?:[A-Za-z0-9+/=]{8,}|[A-Za-z\-]+:[^\n]*))*)"
)
# keyword = value, keyword: value, "keyword": "value", keyword is value. The name holding
# the keyword must end in it or go on after _ or - ("author" and "max_tokens" are not
# names of secrets); its beginning is found by looking back from the keyword.
_SECRET_WORDS = (
    "key", "secret", "token", "pass", "pwd", "credential", "auth",
)  # fmt: skip
_ASSIGNED = re.compile(
    r"(?i:api[_\-]?key|apikey|secret|token|passw(?:or)?d|passwd|pwd|access[_\-]?key|"
    r"private[_\-]?key|client[_\-]?secret|credentials?|auth)"
    r"(?:[_\-][\w\-]*|Key|Id|Value|Token|Secret|String)?"
    r"[\"']?\s*(?::=|=>|[=:]|\s(?:is|was)\s)\s*"
    r"(?P<quote>[\"'`]?)(?P<value>[^\s\"'`,;<>(){}\[\]]{6,200})(?P=quote)"
    r"(?![^\s\"'`,;<>(){}\[\]])"
)
_NAME_START = re.compile(r"[\w.\-]*$")
_AWS_SECRET = re.compile(
    r"(?i)aws[_\-]?secret[_\-]?(?:access[_\-]?)?key[\"']?\s*[=:]\s*[\"']?([A-Za-z0-9/+]{40})(?![\w/+])"
)
_BEARER = re.compile(r"(?i)\bbearer\s+([A-Za-z0-9._~+/\-]{20,}=*)")
_BASIC = re.compile(r"(?i)\bbasic\s+([A-Za-z0-9+/]{8,}={0,2})(?![\w+/=])")
_URL_PASSWORD = re.compile(r"\b[a-z][a-z0-9+.\-]*://[^\s:/@]+:([^\s@/]{3,})@[\w.\-]+")

# Values that are names of things, not secrets: placeholders and references.
_PLACEHOLDER = re.compile(
    r"(?i)^(?:x+|\*+|\.+|-+|_+|<.*>|\$.*|%.*|\{.*\}|null|none|nil|true|false|undefined|"
    r"changeme|change_me|redacted|hidden|example|placeholder|your[_\-].*|my[_\-].*|.*here)$"
)
_PASSWORD_NAME = re.compile(r"(?i)pass|pwd")
# Names about a secret rather than holding one: password_policy, token_type, api_key_url.
_DESCRIPTIVE_NAME = re.compile(
    r"(?i)[_\-.](?:policy|length|len|type|count|file|path|url|uri|name|id|hint|rule|rules|ttl|"
    r"header|limit|endpoint|format|prefix|expiry|expires|version|env|var|field|param)$"
)
_DOTTED_NAME = re.compile(r"^[A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)+$")
_FILE_LIKE = re.compile(r"(?i)\.(?:json|ya?ml|toml|txt|pem|key|env|ini|cfg|conf|py|js|ts)$")


def shannon_entropy(value: str) -> float:
    """Bits per character of ``value``'s character distribution."""
    if not value:
        return 0.0
    counts = Counter(value)
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def _classes(value: str) -> int:
    """Lower, upper, digit, symbol (``_ - .`` are word joiners, not symbols)."""
    return sum(
        (
            any(c.islower() for c in value),
            any(c.isupper() for c in value),
            any(c.isdigit() for c in value),
            any(not c.isalnum() and c not in "_-." for c in value),
        )
    )


def looks_random(value: str, *, min_entropy: float = 3.0, min_length: int = 8) -> bool:
    """High entropy for its length and at least two character classes (so neither a word
    nor a long number)."""
    if len(value) < min_length or _classes(value) < 2:
        return False
    # A short value cannot reach a high entropy: ask for most of what its length allows.
    needed = min(min_entropy, 0.85 * math.log2(len(value)))
    return shannon_entropy(value) >= needed


_RANDOM_BODY = frozenset({"openai_key", "anthropic_key", "gitlab_token", "slack_token"})


def _random_body(value: str) -> bool:
    return any(c.isdigit() or c.isupper() for c in value.split("-", 1)[1])


def _basic_credentials(value: str) -> bool:
    """``user:password`` in base64, as an ``Authorization: Basic`` header carries it."""
    try:
        decoded = base64.b64decode(value + "=" * (-len(value) % 4), validate=True).decode()
    except (binascii.Error, ValueError):
        return False
    user, colon, password = decoded.partition(":")
    return bool(colon and user and password and decoded.isprintable())


def _jwt_header_ok(part: str) -> bool:
    try:
        header = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return False
    return isinstance(header, dict) and "alg" in header


def find_secrets(text: str, *, min_entropy: float = 3.0) -> list[Match]:
    """Every secret in ``text``; where two detectors find the same text, the first wins."""
    kept: list[Match] = []
    for m in _find(text, min_entropy):
        assert m.span is not None
        start, end = m.span
        if not any(k.span is not None and k.span[0] < end and start < k.span[1] for k in kept):
            kept.append(m)
    return kept


def _find(text: str, min_entropy: float) -> Iterator[Match]:
    for detail, literal, pattern in _PREFIXED:
        if literal not in text:
            continue
        for m in pattern.finditer(text):
            # Real keys are random; "sk-this-is-a-placeholder-key" is prose.
            if detail in _RANDOM_BODY and not _random_body(m.group()):
                continue
            yield Match("secret", m.span(), detail=detail)
    if "eyJ" in text:
        for m in _JWT.finditer(text):
            if _jwt_header_ok("eyJ" + m.group(1)):
                yield Match("secret", m.span(), detail="jwt")
    if "-----BEGIN" in text:
        for m in _PEM.finditer(text):
            yield Match("secret", m.span(), detail="private_key")
    lowered = text.lower()
    if "aws" in lowered:
        for m in _AWS_SECRET.finditer(text):
            yield Match("secret", m.span(1), detail="aws_secret_access_key")
    if "bearer" in lowered:
        for m in _BEARER.finditer(text):
            if looks_random(m.group(1), min_entropy=min_entropy):
                yield Match("secret", m.span(1), detail="bearer_token")
    if "basic" in lowered:
        for m in _BASIC.finditer(text):
            if _basic_credentials(m.group(1)):
                yield Match("secret", m.span(1), detail="basic_auth")
    if "://" in text:
        for m in _URL_PASSWORD.finditer(text):
            if not _PLACEHOLDER.match(m.group(1)):
                yield Match("secret", m.span(1), detail="url_password")
    if any(word in lowered for word in _SECRET_WORDS):
        yield from _assigned(text, min_entropy)


def _assigned(text: str, min_entropy: float) -> Iterator[Match]:
    for m in _ASSIGNED.finditer(text):
        value = m.group("value")
        prefix = _NAME_START.search(text, max(0, m.start() - 64), m.start())
        name = (prefix.group() if prefix else "") + text[m.start() : m.start("quote")]
        name = name.rstrip("\"' \t:=>")
        if text[m.end() : m.end() + 1] == "(" or _DESCRIPTIVE_NAME.search(name):
            continue  # a function call, or a setting about secrets
        if (
            _PLACEHOLDER.match(value)
            or _DOTTED_NAME.match(value)
            or _FILE_LIKE.search(value)
            or value.lower().startswith(("http://", "https://"))
        ):
            continue
        if not any(c.isdigit() or not c.isalnum() for c in value):
            continue  # letters only: a word or a name ("auth: Authenticator"), not a secret
        # Passwords are short and chosen by people; keys are long and random.
        password = _PASSWORD_NAME.search(name) is not None
        if looks_random(value, min_entropy=min_entropy, min_length=6 if password else 8):
            yield Match("secret", m.span("value"), detail="assigned_secret")
