"""Twilio status callbacks: HMAC-SHA1 over URL and sorted form fields (or the body's hash),
signed by Twilio's own RequestValidator and its published vectors; every status mapped."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import timedelta
from urllib.parse import urlencode

import pytest
from twilio.request_validator import RequestValidator

from app.receipts.twilio import SIGNATURE_HEADER, receive_twilio
from tests.unit.receipts import inbound

TOKEN = "12345"
NOW = 1_760_000_000
HERALD_ID = uuid.UUID(int=99)
CALLBACK = f"https://herald.example/webhooks/providers/cfg?herald_message_id={HERALD_ID}"

# twilio-python tests/unit/test_request_validator.py
VECTOR_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
VECTOR_PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Digits": "1234",
    "From": "+14158675309",
    "To": "+18005551212",
    "Caller": "+14158675309",
}
VECTOR_BODY = b'{"property": "value", "boolean": true}'
VECTOR_BODY_HASH = "0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620"


def signed(
    fields: dict[str, str], *, url: str = CALLBACK, token: str = TOKEN
) -> tuple[bytes, dict[str, str]]:
    signature = RequestValidator(token).compute_signature(url, fields)
    return urlencode(fields).encode(), {SIGNATURE_HEADER: signature}


def callback(status: str, **extra: str) -> dict[str, str]:
    return {
        "MessageSid": "SM0123456789abcdef0123456789abcdef",
        "MessageStatus": status,
        "SmsStatus": status,
        "AccountSid": "AC0123456789abcdef0123456789abcdef",
        "To": "+15005550006",
        "From": "+15005550001",
        "ApiVersion": "2010-04-01",
        **extra,
    }


def test_the_published_form_vector_verifies() -> None:
    body = urlencode(VECTOR_PARAMS).encode()
    parsed = receive_twilio(
        inbound(body, {SIGNATURE_HEADER: "RSOYDt4T1cUTdK1PDd93/VVr8B8="}, at=NOW, url=VECTOR_URL),
        TOKEN,
    )
    # Authentic, but not a status callback.
    assert parsed.verdict == "unparseable"
    assert parsed.reason == "MessageSid or MessageStatus missing"
    forged = receive_twilio(
        inbound(body, {SIGNATURE_HEADER: "RSOYDt4T1cUTdK1PDd93/VVr8B9="}, at=NOW, url=VECTOR_URL),
        TOKEN,
    )
    assert forged.verdict == "bad_signature"


def test_the_published_vectors_with_and_without_ports_verify() -> None:
    body = urlencode(VECTOR_PARAMS).encode()
    for url, signature in (
        (VECTOR_URL.replace(".com", ".com:1234"), "RSOYDt4T1cUTdK1PDd93/VVr8B8="),
        (VECTOR_URL, "kvajT1Ptam85bY51eRf/AJRuM3w="),  # signed with :443
        (VECTOR_URL.replace("https", "http"), "0ZXoZLH/DfblKGATFgpif+LLRf4="),  # with :80
    ):
        parsed = receive_twilio(
            inbound(body, {SIGNATURE_HEADER: signature}, at=NOW, url=url), TOKEN
        )
        assert parsed.verdict == "unparseable", url  # past the signature: authentic


def test_the_published_body_hash_vector_verifies() -> None:
    url = f"{VECTOR_URL}&bodySHA256={VECTOR_BODY_HASH}"
    headers = {SIGNATURE_HEADER: "a9nBmqA0ju/hNViExpshrM61xv4="}
    parsed = receive_twilio(inbound(VECTOR_BODY, headers, at=NOW, url=url), TOKEN)
    assert parsed.verdict == "unparseable"  # authentic; no MessageSid in this body
    tampered = receive_twilio(
        inbound(VECTOR_BODY.replace(b"value", b"other"), headers, at=NOW, url=url), TOKEN
    )
    assert tampered.verdict == "bad_signature"


def test_a_json_status_callback_signed_by_its_body_hash() -> None:
    body = json.dumps(callback("delivered")).encode()
    url = f"{CALLBACK}&bodySHA256={hashlib.sha256(body).hexdigest()}"
    signature = RequestValidator(TOKEN).compute_signature(url, {})
    assert RequestValidator(TOKEN).validate(url, body.decode(), signature)
    parsed = receive_twilio(inbound(body, {SIGNATURE_HEADER: signature}, at=NOW, url=url), TOKEN)
    assert parsed.verdict == "verified", parsed.reason
    [receipt] = parsed.events
    assert receipt.kind == "delivered"
    assert receipt.message_id == HERALD_ID


def test_the_sdk_validator_and_ours_agree() -> None:
    fields = callback("delivered")
    body, headers = signed(fields)
    validator = RequestValidator(TOKEN)
    assert validator.validate(CALLBACK, fields, headers[SIGNATURE_HEADER])
    assert receive_twilio(inbound(body, headers, at=NOW, url=CALLBACK), TOKEN).verdict == "verified"

    tampered_fields = {**fields, "MessageStatus": "undelivered"}
    tampered = urlencode(tampered_fields).encode()
    assert not validator.validate(CALLBACK, tampered_fields, headers[SIGNATURE_HEADER])
    assert (
        receive_twilio(inbound(tampered, headers, at=NOW, url=CALLBACK), TOKEN).verdict
        == "bad_signature"
    )

    moved = CALLBACK.replace(str(HERALD_ID), str(uuid.UUID(int=1)))
    assert not validator.validate(moved, fields, headers[SIGNATURE_HEADER])
    assert receive_twilio(inbound(body, headers, at=NOW, url=moved), TOKEN).verdict == (
        "bad_signature"
    )


def test_another_accounts_token_is_refused() -> None:
    body, headers = signed(callback("delivered"), token="another-token")
    parsed = receive_twilio(inbound(body, headers, at=NOW, url=CALLBACK), TOKEN)
    assert parsed.verdict == "bad_signature"
    assert parsed.events == []


def test_a_field_added_after_signing_is_refused() -> None:
    body, headers = signed(callback("delivered"))
    parsed = receive_twilio(
        inbound(body + b"&ErrorCode=21610", headers, at=NOW, url=CALLBACK), TOKEN
    )
    assert parsed.verdict == "bad_signature"


def test_no_timestamp_means_no_staleness() -> None:
    # Twilio's callbacks carry no time: a day-late retry is still authentic (dedup absorbs it).
    body, headers = signed(callback("delivered"))
    parsed = receive_twilio(
        inbound(body, headers, at=NOW + 86_400, url=CALLBACK), TOKEN, tolerance=timedelta(0)
    )
    assert parsed.verdict == "verified"


@pytest.mark.parametrize(
    ("body", "headers", "url"),
    [
        (b"MessageSid=SM1&MessageStatus=sent", {}, CALLBACK),
        (b"MessageSid=SM1&MessageStatus=sent", {SIGNATURE_HEADER: ""}, CALLBACK),
        (b"\xff\xfe\xfd", {SIGNATURE_HEADER: "x"}, CALLBACK),
        (b"a=1&" * 5_000, {SIGNATURE_HEADER: "x"}, CALLBACK),  # too many fields
        (b"", {SIGNATURE_HEADER: "x" * 100_000}, CALLBACK),
        (b"", {SIGNATURE_HEADER: "x"}, "https://herald.example:99999/x"),
        (b"[", {SIGNATURE_HEADER: "x"}, CALLBACK + "&bodySHA256=00"),
    ],
)
def test_hostile_requests_are_bad_signatures(
    body: bytes, headers: dict[str, str], url: str
) -> None:
    assert receive_twilio(inbound(body, headers, at=NOW, url=url), TOKEN).verdict == "bad_signature"


@pytest.mark.parametrize("body", [b"[" * 100_000, b"not json", b"[1, 2]", b"\xff"])
def test_a_signed_json_body_that_is_not_an_object_is_unparseable(body: bytes) -> None:
    url = f"{CALLBACK}&bodySHA256={hashlib.sha256(body).hexdigest()}"
    signature = RequestValidator(TOKEN).compute_signature(url, {})
    parsed = receive_twilio(inbound(body, {SIGNATURE_HEADER: signature}, at=NOW, url=url), TOKEN)
    assert parsed.verdict == "unparseable"


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        ("queued", "deferred"),
        ("accepted", "deferred"),
        ("scheduled", "deferred"),
        ("sending", "deferred"),
        ("sent", "sent"),
        ("delivered", "delivered"),
        ("undelivered", "undelivered"),
        ("failed", "failed"),
        ("read", "opened"),
        ("canceled", "failed"),
    ],
)
def test_every_status_maps(status: str, kind: str) -> None:
    body, headers = signed(callback(status))
    parsed = receive_twilio(inbound(body, headers, at=NOW, url=CALLBACK), TOKEN)
    assert parsed.verdict == "verified", parsed.reason
    [receipt] = parsed.events
    assert receipt.kind == kind
    assert receipt.suppress is None
    assert receipt.provider_event_id == f"SM0123456789abcdef0123456789abcdef:{status}"
    assert receipt.provider_message_id == "SM0123456789abcdef0123456789abcdef"
    assert receipt.message_id == HERALD_ID
    assert receipt.detail == {"status": status}
    assert receipt.occurred_at == inbound(b"", at=NOW).received_at


def test_stop_suppresses_the_number() -> None:
    body, headers = signed(callback("undelivered", ErrorCode="21610"))
    [receipt] = receive_twilio(inbound(body, headers, at=NOW, url=CALLBACK), TOKEN).events
    assert (receipt.kind, receipt.suppress) == ("undelivered", "unsubscribed")
    assert receipt.detail == {"status": "undelivered", "error_code": "21610"}

    body, headers = signed(callback("failed", ErrorCode="30003"))
    [receipt] = receive_twilio(inbound(body, headers, at=NOW, url=CALLBACK), TOKEN).events
    assert (receipt.kind, receipt.suppress) == ("failed", None)


def test_statuses_herald_does_not_track_verify_to_nothing() -> None:
    body, headers = signed(callback("receiving"))
    parsed = receive_twilio(inbound(body, headers, at=NOW, url=CALLBACK), TOKEN)
    assert (parsed.verdict, parsed.events) == ("verified", [])


def test_a_callback_url_without_herald_id_has_no_message_id() -> None:
    url = "https://herald.example/webhooks/providers/cfg?herald_message_id=garbage"
    body, headers = signed(callback("sent"), url=url)
    [receipt] = receive_twilio(inbound(body, headers, at=NOW, url=url), TOKEN).events
    assert receipt.message_id is None
