"""PII detectors: true positives across formats, and the look-alikes they must leave alone."""

from __future__ import annotations

import pytest

from powertrain.guard.checksums import (
    de_tax_id_valid,
    es_dni_valid,
    fr_nir_valid,
    iban_valid,
    it_codice_fiscale_valid,
    luhn_valid,
    nl_bsn_valid,
    verhoeff_valid,
)
from powertrain.guard.pii import PiiGuardrail, card_brand, find_pii


def found(text: str, category: str | None = None) -> list[tuple[str, str]]:
    """(category, matched text) for every match, optionally of one category."""
    return [
        (m.category, text[m.span[0] : m.span[1]])
        for m in find_pii(text)
        if m.span is not None and (category is None or m.category == category)
    ]


def only(text: str, category: str, value: str) -> None:
    assert found(text) == [(category, value)], found(text)


# ---------------------------------------------------------------------------- e-mail


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("write to john.doe@example.com today", "john.doe@example.com"),
        ("<Jane.O'Neil+news@mail.example.co.uk>", "Jane.O'Neil+news@mail.example.co.uk"),
        ("mail: user_1@sub-domain.example.org.", "user_1@sub-domain.example.org"),
        ("contact josé@exämple.com", "josé@exämple.com"),
        ("(a.b-c@d.io)", "a.b-c@d.io"),
    ],
)
def test_emails(text: str, value: str) -> None:
    only(text, "email", value)


@pytest.mark.parametrize(
    "text",
    ["icon@2x.png", "user@localhost", "@mention in a chat", "npm i pkg@1.2.3", "a@b", "x@y.1"],
)
def test_not_emails(text: str) -> None:
    assert found(text, "email") == []


# ---------------------------------------------------------------------------- phone


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("call +1 (415) 555-0100 now", "+1 (415) 555-0100"),
        ("+44 20 7946 0958", "+44 20 7946 0958"),
        ("+33 6 12 34 56 78", "+33 6 12 34 56 78"),
        ("+49 30 1234567", "+49 30 1234567"),
        ("+91-98765-43210", "+91-98765-43210"),
        ("reach me on +14155550100.", "+14155550100"),
        ("(415) 555-0100", "(415) 555-0100"),
        ("415-555-0100", "415-555-0100"),
        ("415.555.0100", "415.555.0100"),
        ("1-800-555-0100", "1-800-555-0100"),
        ("555-123-4567", "555-123-4567"),
        ("London office: 020 7946 0958", "020 7946 0958"),
        ("mobile 07700 900123", "07700 900123"),
        ("06 12 34 56 78", "06 12 34 56 78"),
        ("030 12345678", "030 12345678"),
        ("phone: 5550100", "5550100"),
        ("Tel. 4155550100", "4155550100"),
        ("whatsapp 0044 20 7946 0958", "0044 20 7946 0958"),
        ("Contact no: 415-555-0100", "415-555-0100"),
        ("My number is 555-1234", "555-1234"),
        ("+7 495 123-45-67", "+7 495 123-45-67"),
        ("+55 11 91234-5678", "+55 11 91234-5678"),
        ("+49 (0)30 1234567", "+49 (0)30 1234567"),
        ("+1 202 555 0173 ext. 12", "+1 202 555 0173"),
    ],
)
def test_phones(text: str, value: str) -> None:
    only(text, "phone", value)


@pytest.mark.parametrize(
    "text",
    [
        "order #123-456-7890",
        "Order number 12345678",
        "invoice 2024-000123",
        "ticket 0012345678",
        "on 2024-01-15 at 10:30",
        "15/01/2024",
        "01.02.2024 12:30:45",
        "2024-01-15T10:30:00Z",
        "timestamp 1700000000 or 1700000000000",
        "version 1.2.3 and v2.10.4",
        "ISBN 978-3-16-148410-0",
        "ISBN 0-306-40615-2",
        "uuid 123e4567-e89b-12d3-a456-426614174000",
        "price $1,234.56 or 1 234 567 EUR",
        "pi is 3.14159265358979",
        "+5 points",
        "scored 98 of 100, 42 of 50",
        "tracking 1Z999AA10123456784",
        "0.5 0.25 0.125",
        "3 + 4 = 7",
        "order number is 555-1234",
    ],
)
def test_not_phones(text: str) -> None:
    assert found(text, "phone") == []


# ---------------------------------------------------------------------------- payment card


@pytest.mark.parametrize(
    ("text", "value", "brand"),
    [
        ("card 4111 1111 1111 1111", "4111 1111 1111 1111", "visa"),
        ("card no. 4111111111111111", "4111111111111111", "visa"),
        ("4111-1111-1111-1111", "4111-1111-1111-1111", "visa"),
        ("4012888888881881", "4012888888881881", "visa"),
        ("5555 5555 5555 4444", "5555 5555 5555 4444", "mastercard"),
        ("2223003122003222", "2223003122003222", "mastercard"),
        ("378282246310005", "378282246310005", "amex"),
        ("3714 496353 98431", "3714 496353 98431", "amex"),
        ("6011 1111 1111 1117", "6011 1111 1111 1117", "discover"),
        ("3530111333300000", "3530111333300000", "jcb"),
        ("30569309025904", "30569309025904", "diners"),
        ("6200000000000005", "6200000000000005", "unionpay"),
    ],
)
def test_cards(text: str, value: str, brand: str) -> None:
    only(text, "card", value)
    assert find_pii(text)[0].detail == brand


@pytest.mark.parametrize(
    "text",
    [
        "4111 1111 1111 1112",  # Luhn fails
        "4111111111111112",
        "5555555555554445",
        "1234 5678 9012 3456",  # no issuer starts with 1
        "0000 0000 0000 0000",
        "order 9000123456789012",  # passes Luhn, but 9 is not an issuer prefix
        "20240115103000123",
        "timestamp 1700000000000",
        "4111 1111 1111 1111 1111 1111",  # too long
        "id 123e4567-e89b-12d3-a456-426614174000",
        "Order #4111111111111111 shipped",  # Luhn-valid, but called an order number
    ],
)
def test_not_cards(text: str) -> None:
    assert found(text, "card") == []


def test_card_brand_and_luhn() -> None:
    assert luhn_valid("79927398713") and not luhn_valid("79927398710")
    assert card_brand("4111111111111111") == "visa"
    assert card_brand("9111111111111111") is None
    assert card_brand("41111111111111") is None  # Visa is 13, 16 or 19 digits


# ---------------------------------------------------------------------------- IBAN


@pytest.mark.parametrize(
    "value",
    [
        "DE89 3704 0044 0532 0130 00",
        "DE89370400440532013000",
        "GB82WEST12345698765432",
        "GB82 WEST 1234 5698 7654 32",
        "FR14 2004 1010 0505 0001 3M02 606",
        "NL91ABNA0417164300",
        "CH93 0076 2011 6238 5295 7",
        "BE68539007547034",
        "NO9386011117947",
    ],
)
def test_ibans(value: str) -> None:
    only(f"pay to {value}, thanks", "iban", value)


def test_iban_followed_by_more_groups_is_cut_at_its_length() -> None:
    assert found("IBAN DE89 3704 0044 0532 0130 00 1234 ok", "iban") == [
        ("iban", "DE89 3704 0044 0532 0130 00")
    ]


@pytest.mark.parametrize(
    "text",
    [
        "DE89 3704 0044 0532 0130 01",  # mod 97 fails
        "GB82WEST12345698765433",
        "DE89370400440532013",  # wrong length for DE
        "XX89370400440532013000",  # no such country
        "AB12 CDEF GHIJ KLMN",
    ],
)
def test_not_ibans(text: str) -> None:
    assert found(text, "iban") == []
    assert not iban_valid(text.replace(" ", ""))


# ---------------------------------------------------------------------------- national ids


@pytest.mark.parametrize(
    ("text", "value", "kind"),
    [
        ("SSN 123-45-6789", "123-45-6789", "us_ssn"),
        ("my number is 078 05 1120", "078 05 1120", "us_ssn"),
        ("social security number: 123456789", "123456789", "us_ssn"),
        ("NINO AB123456C", "AB123456C", "uk_nino"),
        ("ni: JG 10 37 58 A", "JG 10 37 58 A", "uk_nino"),
        ("aadhaar 2345 6789 0124", "2345 6789 0124", "in_aadhaar"),
        ("Aadhaar no. 234567890124", "234567890124", "in_aadhaar"),
        ("DNI 12345678Z", "12345678Z", "es_dni"),
        ("NIE X1234567L", "X1234567L", "es_nie"),
        ("NIE Y-0000000-Z", "Y-0000000-Z", "es_nie"),
        ("NIR 1 84 12 76 451 089 46", "1 84 12 76 451 089 46", "fr_nir"),
        ("BSN: 111222333", "111222333", "nl_bsn"),
        ("Steuer-ID 86095742719", "86095742719", "de_tax_id"),
        ("codice fiscale RSSMRA85T10A562S", "RSSMRA85T10A562S", "it_codice_fiscale"),
    ],
)
def test_national_ids(text: str, value: str, kind: str) -> None:
    only(text, "national_id", value)
    assert find_pii(text)[0].detail == kind


@pytest.mark.parametrize(
    "text",
    [
        "000-12-3456",  # SSN area 000
        "666-12-3456",
        "900-12-3456",
        "123-00-4567",  # group 00
        "123-45-0000",  # serial 0000
        "123456789",  # a bare 9-digit number without a word naming it
        "QQ123456C",  # NINO prefix never issued
        "BG123456A",
        "AB123456E",  # NINO suffix is A-D
        "2345 6789 0123",  # Verhoeff fails
        "1234 5678 9012",  # Aadhaar never starts with 1
        "12345678A",  # wrong DNI letter
        "X1234567A",
        "1 84 12 76 451 089 47",  # NIR key fails
        "BSN: 111222334",  # 11-proof fails
        "Steuer-ID 86095742718",
        "RSSMRA85T10A562T",  # check letter fails
        "the 86095742719 items",  # valid tax id digits, but nothing says it is one
    ],
)
def test_not_national_ids(text: str) -> None:
    assert found(text, "national_id") == []


def test_checksums() -> None:
    assert verhoeff_valid("2363") and not verhoeff_valid("2364")
    assert es_dni_valid("12345678", "Z") and not es_dni_valid("12345678", "A")
    assert fr_nir_valid("1841276451089", "46")
    assert nl_bsn_valid("111222333") and not nl_bsn_valid("000000000")
    assert de_tax_id_valid("86095742719") and not de_tax_id_valid("11111111111")
    assert it_codice_fiscale_valid("RSSMRA85T10A562S")


# ---------------------------------------------------------------------------- IP address


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("server at 192.168.1.254.", "192.168.1.254"),
        ("from 8.8.8.8", "8.8.8.8"),
        ("10.0.0.1/8", "10.0.0.1"),
        ("ipv6 2001:db8::1 is", "2001:db8::1"),
        ("fe80::1ff:fe23:4567:890a%eth0", "fe80::1ff:fe23:4567:890a%eth0"),
        ("[2001:0db8:85a3:0000:0000:8a2e:0370:7334]", "2001:0db8:85a3:0000:0000:8a2e:0370:7334"),
    ],
)
def test_ips(text: str, value: str) -> None:
    only(text, "ip", value)


@pytest.mark.parametrize(
    "text",
    [
        "version 1.2.3",
        "v1.2.3.4",
        "version 4.2.1.0",
        "see section 1.2.3.4",
        "256.1.1.1",
        "01.02.03.04",
        "1.2.3.4.5",
        "at 10:30:00",
        "mac 00:1A:2B:3C:4D:5E",
        "std::vector and a::b",
        "loopback ::1",
        "ratio 1:2:3:4:5:6:7:8",
        "3.14.15",
        "the version is 2.0.1.5",
        "10.5.3.2 release notes",
        "1.2.3.4-beta",
        "Chrome 120.0.6099.109",
    ],
)
def test_not_ips(text: str) -> None:
    assert found(text, "ip") == []


# ---------------------------------------------------------------------------- together


def test_overlaps_resolve_to_the_stronger_category() -> None:
    # The digits of a card also look like a phone; the card wins.
    assert found("4111 1111 1111 1111") == [("card", "4111 1111 1111 1111")]
    # A password inside a URL is a secret; the rest of the URL is not an e-mail.
    text = "postgres://admin:s3cretP4ss@db.example.com/app"
    assert [c for c, _ in found(text)] == ["secret"]


def test_many_kinds_in_one_text() -> None:
    text = (
        "Hi, I'm Jane (jane@example.com, +44 20 7946 0958). Card 4111 1111 1111 1111, "
        "IBAN GB82 WEST 1234 5698 7654 32, SSN 123-45-6789, from 203.0.113.7."
    )
    assert [c for c, _ in found(text)] == ["email", "phone", "card", "iban", "national_id", "ip"]


def test_guardrail_categories_and_allow_list() -> None:
    text = "mail support@acme.com or jane@example.com, call 415-555-0100"
    only_email = PiiGuardrail("p", categories=["email"], allow=["Support@Acme.com"])
    matches = only_email.check(text)
    assert [text[m.span[0] : m.span[1]] for m in matches if m.span] == ["jane@example.com"]
    with pytest.raises(ValueError, match="unknown categories"):
        PiiGuardrail("p", categories=["emails"])


def test_plain_prose_has_no_pii() -> None:
    text = (
        "In 2023 we shipped 3 releases (v1.4, v1.5 and v2.0) to 1,200 customers across "
        "14 countries; revenue grew 12.5% to $3.4M. The meeting is on 2024-03-05 at 14:30 "
        "in room 4.12. Order 100234 ships in 3-5 days. Python 3.11.7 and Node 20.10.0."
    )
    assert found(text) == []


def test_addresses_end_sentences() -> None:
    assert found("Ping 2001:db8::1.", "ip") == [("ip", "2001:db8::1")]
    assert found("Ping 10.1.2.3.", "ip") == [("ip", "10.1.2.3")]
    assert found("Mail bob@example.com.", "email") == [("email", "bob@example.com")]
    assert found("Call 415-555-0100.", "phone") == [("phone", "415-555-0100")]
