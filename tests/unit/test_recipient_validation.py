"""Recipient field validation and normalisation, without a database."""

from __future__ import annotations

from typing import Any

import pytest

from app.recipients import validation as v
from app.recipients.schemas import PushToken, RecipientInput
from app.recipients.service import normalise_input


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        ("Ada@Example.COM", "Ada@example.com"),
        ("ünï@exämple.de", "ünï@exämple.de"),
    ],
)
def test_emails_are_normalised(value: str, stored: str) -> None:
    assert v.normalise_email(value) == stored


@pytest.mark.parametrize("value", ["", "plain", "a@b", "a@localhost", "a@@example.com"])
def test_bad_emails(value: str) -> None:
    with pytest.raises(v.RecipientInvalid) as raised:
        v.normalise_email(value)
    assert raised.value.field == "email"


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        ("+14155550123", "+14155550123"),
        ("+1 (415) 555-0123", "+14155550123"),
        ("+33 6 12 34 56 78", "+33612345678"),
    ],
)
def test_phones_become_e164(value: str, stored: str) -> None:
    assert v.normalise_phone(value) == stored


@pytest.mark.parametrize("value", ["0612345678", "+1 555 555 0100", "+999", "phone", ""])
def test_bad_phones(value: str) -> None:
    with pytest.raises(v.RecipientInvalid) as raised:
        v.normalise_phone(value)
    assert raised.value.field == "phone"


@pytest.mark.parametrize(
    ("value", "stored"),
    [("en", "en"), ("FR-ca", "fr-CA"), ("zh_hant_tw", "zh-Hant-TW"), ("es-419", "es-419")],
)
def test_locales(value: str, stored: str) -> None:
    assert v.normalise_locale(value) == stored


@pytest.mark.parametrize("value", ["", "e", "english", "en-", "en-USA1", "12"])
def test_bad_locales(value: str) -> None:
    with pytest.raises(v.RecipientInvalid):
        v.normalise_locale(value)


def test_timezones() -> None:
    assert v.normalise_timezone("America/Argentina/Buenos_Aires") == (
        "America/Argentina/Buenos_Aires"
    )
    assert v.normalise_timezone("UTC") == "UTC"
    assert v.normalise_timezone("US/Eastern") == "US/Eastern"  # a backward-compatible link


@pytest.mark.parametrize(
    "bad",
    [
        "Mars/Base",
        "/etc/passwd",
        "../x",
        "../etc/passwd",
        "",
        "Europe/",
        # Folders of the tz database and the tzdata package: ZoneInfo raises
        # IsADirectoryError or worse for these, not ZoneInfoNotFoundError.
        "Europe",
        "Etc",
        "America",
        "__pycache__",
        "zone.tab",
        "UTC ",
        " UTC",
        "utc\x00",
        "x" * 64,
        "Europe/Paris" * 100,
    ],
)
def test_bad_timezones(bad: str) -> None:
    with pytest.raises(v.RecipientInvalid) as raised:
        v.normalise_timezone(bad)
    assert raised.value.field == "timezone"


@pytest.mark.parametrize(
    "value",
    [
        "http://example.com",
        "https://hooks.example.com:8443/a/b?c=d",
        "https://user:pw@example.com/x",
    ],
)
def test_urls(value: str) -> None:
    assert v.normalise_url(value) == value


@pytest.mark.parametrize(
    "value",
    [
        "ftp://example.com",
        "example.com/path",
        "https://",
        "https://exa mple.com",
        "https://example.com:70000",
        "https://exämple.com",
        "https://example.com/" + "a" * 2048,
    ],
)
def test_bad_urls(value: str) -> None:
    with pytest.raises(v.RecipientInvalid) as raised:
        v.normalise_url(value)
    assert raised.value.field == "webhook_url"


def test_push_tokens() -> None:
    tokens = [PushToken("fcm", "a"), PushToken("apns", "b"), PushToken("fcm", "a")]
    assert v.normalise_push_tokens(tokens) == [
        {"provider": "fcm", "token": "a"},
        {"provider": "apns", "token": "b"},
    ]
    too_many = [PushToken("fcm", f"t{n}") for n in range(21)]
    cases: list[tuple[list[Any], str]] = [
        (too_many, "push_tokens"),
        ([PushToken("fcm", "a"), PushToken("wns", "b")], "push_tokens[1].provider"),  # type: ignore[arg-type]
        ([PushToken("fcm", "has space")], "push_tokens[0].token"),
        ([PushToken("fcm", "x" * 1025)], "push_tokens[0].token"),
    ]
    for value, field in cases:
        with pytest.raises(v.RecipientInvalid) as raised:
            v.normalise_push_tokens(value)
        assert raised.value.field == field


def test_data_is_a_small_json_object() -> None:
    assert v.normalise_data({"a": [1, {"b": None}]}) == {"a": [1, {"b": None}]}
    for bad in ([1], "text", {"k": object()}, {"k": "x" * v.MAX_DATA_BYTES}):
        with pytest.raises(v.RecipientInvalid) as raised:
            v.normalise_data(bad)
        assert raised.value.field == "data"


@pytest.mark.parametrize(
    "value", ["", "a/b", "a b", "tab\t", "erased:1", "batch", ".", "..", "x" * 201]
)
def test_bad_external_ids(value: str) -> None:
    with pytest.raises(v.RecipientInvalid) as raised:
        v.normalise_external_id(value)
    assert raised.value.field == "external_id"


def test_category_keys() -> None:
    assert v.check_category_key("billing.invoices_v2-x") == "billing.invoices_v2-x"
    for bad in ("", "*", "Caps", "_first", "x" * 65, "a b"):
        with pytest.raises(v.RecipientInvalid):
            v.check_category_key(bad)


def test_suppression_keys() -> None:
    assert v.suppression_key("email", " A@Example.COM ") == "a@example.com"
    assert v.suppression_key("sms", "+1 415 555 0123") == "+14155550123"
    assert v.suppression_key("sms", "short-code 1234") == "short-code 1234"
    assert v.suppression_key("push", "fcm:Token") == "fcm:Token"
    assert v.check_suppression_address("push", "apns:abc") == "apns:abc"
    with pytest.raises(v.RecipientInvalid) as raised:
        v.check_suppression_address("push", "abc")
    assert (raised.value.field, raised.value.message) == (
        "address",
        "a push address is 'fcm:<token>' or 'apns:<token>'",
    )


def test_left_out_fields_are_not_touched_and_null_clears() -> None:
    external_id, values = normalise_input(
        RecipientInput(external_id="u", email=None, push_tokens=None, data=None, locale="EN")
    )
    assert external_id == "u"
    assert values == {"email": None, "push_tokens": [], "data": {}, "locale": "en"}
