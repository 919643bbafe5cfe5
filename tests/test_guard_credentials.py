"""Secrets: provider keys by prefix, JWTs, private keys, and assigned credentials.

Key-shaped values are assembled from pieces so this file is not itself a
scanner's find.
"""

from __future__ import annotations

import base64
import json

import pytest

from powertrain.guard.credentials import find_secrets, looks_random, shannon_entropy


def secrets_in(text: str) -> list[tuple[str, str]]:
    return [(m.detail or "", text[m.span[0] : m.span[1]]) for m in find_secrets(text) if m.span]


def _jwt(header: dict[str, str]) -> str:
    def part(value: dict[str, str]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return part(header) + "." + part({"sub": "1234567890", "name": "Jo"}) + ".c2lnbmF0dXJlX2J5dGVz"


KEYS = [
    ("openai_key", "sk-" + "proj-" + "abc123DEF456ghi789JKL012mno345PQR678"),
    ("openai_key", "sk-" + "1234567890abcdefghijklmnopqrstuvwxyzABCD"),
    ("anthropic_key", "sk-" + "ant-api03-" + "abcdefghij1234567890ABCDEFGHIJ-xyz_0"),
    ("aws_access_key_id", "AKIA" + "IOSFODNN7EXAMPLE"),
    ("aws_access_key_id", "ASIA" + "Y34FZKBOKMUTVV7A"),
    ("github_token", "ghp_" + "1234567890abcdefghijklmnopqrstuvwxyzAB"),
    ("github_token", "gho_" + "16C7e42F292c6912E7710c838347Ae178B4a"),
    ("github_token", "github_pat_" + "11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz0123"),
    ("slack_token", "xoxb-" + "1234567890-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"),
    ("google_api_key", "AIza" + "SyA1234567890abcdefghijklmnopqrstuv"),
    ("stripe_key", "sk_" + "live_" + "4eC39HqLyjWDarjtT1zdp7dc"),
    ("stripe_key", "rk_" + "live_" + "51H8x2eKZvKYlo2C0aB1cD2eF3g"),
    ("jwt", _jwt({"alg": "HS256", "typ": "JWT"})),
]


@pytest.mark.parametrize(("detail", "key"), KEYS)
def test_prefixed_keys(detail: str, key: str) -> None:
    assert secrets_in(f"use {key} for prod") == [(detail, key)]
    assert secrets_in(f'OPENAI="{key}"')[0] == (detail, key)


@pytest.mark.parametrize(
    "text",
    [
        "sk-this-is-not-a-real-key-just-prose",  # no digits or capitals: words, not a key
        "task-1234567890abcdefghijklmnop",  # "sk-" inside a word
        "AKIA1234",  # too short
        "ghp_short",
        "eyJhbGciOi.notjwt.atall",
        _jwt({"typ": "JWT"}),  # header without "alg"
        "risk-assessment-for-the-project-2024",
    ],
)
def test_not_keys(text: str) -> None:
    assert secrets_in(text) == []


def test_private_key_blocks() -> None:
    block = (
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA1234abcd\n-----END RSA PRIVATE KEY-----"
    )
    assert secrets_in(f"key:\n{block}\nthanks") == [("private_key", block)]
    cut = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmU"
    assert secrets_in(cut + "\n") == [("private_key", cut)]
    assert secrets_in("-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkq\n-----END PUBLIC KEY-----") == []


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ('api_key = "9f8e7d6c5b4a39281706f5e4d3c2b1a0"', "9f8e7d6c5b4a39281706f5e4d3c2b1a0"),
        ("password: Xy7!kq9Lz2", "Xy7!kq9Lz2"),
        ("DB_PASSWORD=hunter2", "hunter2"),
        ('{"client_secret": "aB3dE5fG7hJ9kL1mN3pQ"}', "aB3dE5fG7hJ9kL1mN3pQ"),
        ("secretKey: 'Zq8#mW2$vL9@'", "Zq8#mW2$vL9@"),
        ("my password is Tr0ub4dor&3", "Tr0ub4dor&3"),
        ("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
         "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
        ("Authorization: Bearer abcDEF123ghiJKL456mnoPQR789", "abcDEF123ghiJKL456mnoPQR789"),
        ("postgres://admin:s3cretP4ss@db.example.com/app", "s3cretP4ss"),
        ("Authorization: Basic YWxhZGRpbjpvcGVuc2VzYW1l", "YWxhZGRpbjpvcGVuc2VzYW1l"),
    ],
)  # fmt: skip
def test_assigned_secrets(text: str, value: str) -> None:
    assert [v for _d, v in secrets_in(text)] == [value]


@pytest.mark.parametrize(
    "text",
    [
        "token = get_token()",
        "secret: ${SECRET}",
        "api_key: YOUR_API_KEY",
        "api_key = <your key here>",
        "password = os.environ.get('PW')",
        "auth_token = self.token_value",
        "author: JohnSmith1990",
        "max_tokens: 4096",
        "tokenizer: cl100k_base",
        "password_policy: min8chars",
        "token_type: bearer_token",
        "the secret sauce is ketchup",
        "password: xxxxxxxx",
        "secret_file: /etc/app/secret.json",
        "postgres://user:@localhost/db",
        "Bearer token",
        "basic settings for beginners",
        "Basic YWJjZGVmZ2hpams=",  # base64 without a colon: not credentials
    ],
)
def test_not_assigned_secrets(text: str) -> None:
    assert secrets_in(text) == []


def test_entropy() -> None:
    assert shannon_entropy("aaaa") == 0
    assert shannon_entropy("abcd") == 2
    assert looks_random("9f8e7d6c5b4a3928")
    assert not looks_random("passwordpassword")  # one character class
    assert not looks_random("aaaaaaa1")  # low entropy
