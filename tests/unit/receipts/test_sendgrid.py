"""SendGrid Event Webhook: ECDSA P-256 over timestamp + body, checked against SendGrid's own
SDK verifier and its published vector; every event type's mapping; bounds."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sendgrid.helpers.eventwebhook import EventWebhook

from app.receipts.events import MAX_DETAIL_CHARS, MAX_EVENTS
from app.receipts.sendgrid import SIGNATURE_HEADER, TIMESTAMP_HEADER, receive_sendgrid
from tests.unit.receipts import inbound

TOLERANCE = timedelta(minutes=5)
NOW = 1_760_000_000

# The vector of sendgrid-python's test/unit/test_eventwebhook.py.
VECTOR_KEY = (
    "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE83T4O/n84iotIvIW4mdBgQ/7dAfSmpqIM8kF9mN1flpVKS3GRqe62gw+"
    "2fNNRaINXvVpiglSI8eNEc6wEA3F+g=="
)
VECTOR_SIGNATURE = (
    "MEUCIGHQVtGj+Y3LkG9fLcxf3qfI10QysgDWmMOVmxG0u6ZUAiEAyBiXDWzM+uOe5W0JuG+luQAbPIqHh89M15T"
    "luLtEZtM="
)
VECTOR_TIMESTAMP = "1600112502"
VECTOR_PAYLOAD = (
    json.dumps(
        [
            {
                "email": "hello@world.com",
                "event": "dropped",
                "reason": "Bounced Address",
                "sg_event_id": "ZHJvcC0xMDk5NDkxOS1MUnpYbF9OSFN0T0doUTRrb2ZTbV9BLTA",
                "sg_message_id": (
                    "LRzXl_NHStOGhQ4kofSm_A.filterdrecv-p3mdw1-756b745b58-kmzbl-18-5F5FC76C-9.0"
                ),
                "smtp-id": "<LRzXl_NHStOGhQ4kofSm_A@ismtpd0039p1iad1.sendgrid.net>",
                "timestamp": 1600112492,
            }
        ],
        sort_keys=True,
        separators=(",", ":"),
    )
    + "\r\n"
)


class Signer:
    """A SendGrid account's signing key, made for the test."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        der = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.public_key = base64.b64encode(der).decode()

    def headers(self, body: bytes, timestamp: int = NOW) -> dict[str, str]:
        signature = self.key.sign(str(timestamp).encode() + body, ec.ECDSA(hashes.SHA256()))
        return {
            SIGNATURE_HEADER: base64.b64encode(signature).decode(),
            TIMESTAMP_HEADER: str(timestamp),
        }


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer()


def events_body(*events: dict[str, Any]) -> bytes:
    return json.dumps(list(events)).encode() + b"\r\n"


def event(name: str, **fields: Any) -> dict[str, Any]:
    return {
        "event": name,
        "sg_event_id": f"evt-{name}-{uuid.uuid4().hex[:8]}",
        "sg_message_id": "sgmsg.filter-1",
        "timestamp": NOW - 30,
        "herald_message_id": str(uuid.UUID(int=7)),
        **fields,
    }


def test_the_published_vector_verifies() -> None:
    body = VECTOR_PAYLOAD.encode()
    headers = {SIGNATURE_HEADER: VECTOR_SIGNATURE, TIMESTAMP_HEADER: VECTOR_TIMESTAMP}
    parsed = receive_sendgrid(
        inbound(body, headers, at=int(VECTOR_TIMESTAMP) + 20), VECTOR_KEY, tolerance=TOLERANCE
    )
    assert parsed.verdict == "verified", parsed.reason
    [dropped] = parsed.events
    assert dropped.kind == "failed"
    assert dropped.provider_event_id == "ZHJvcC0xMDk5NDkxOS1MUnpYbF9OSFN0T0doUTRrb2ZTbV9BLTA"
    assert dropped.provider_message_id is not None
    assert dropped.provider_message_id.startswith("LRzXl_NHStOGhQ4kofSm_A.")
    assert dropped.message_id is None  # the vector's send carried no custom_args
    assert dropped.occurred_at == datetime.fromtimestamp(1600112492, UTC)
    assert dropped.detail == {"event": "dropped", "reason": "Bounced Address"}
    assert dropped.suppress is None
    # The vector without its trailing CRLF is another body.
    cut = receive_sendgrid(
        inbound(body.rstrip(), headers, at=int(VECTOR_TIMESTAMP)), VECTOR_KEY, tolerance=TOLERANCE
    )
    assert cut.verdict == "bad_signature"


def test_the_sdk_verifier_and_ours_agree(signer: Signer) -> None:
    sdk = EventWebhook(signer.public_key)
    body = events_body(event("delivered"))
    tampered = body.replace(b"delivered", b"bounce\x20\x20\x20")
    headers = signer.headers(body)
    for candidate, expected in ((body, True), (tampered, False)):
        ours = receive_sendgrid(
            inbound(candidate, headers, at=NOW), signer.public_key, tolerance=TOLERANCE
        )
        theirs = sdk.verify_signature(
            candidate.decode(), headers[SIGNATURE_HEADER], headers[TIMESTAMP_HEADER]
        )
        assert theirs is expected
        assert (ours.verdict == "verified") is expected
        if not expected:
            assert ours.verdict == "bad_signature"
            assert ours.events == []


def test_another_accounts_key_is_refused(signer: Signer) -> None:
    body = events_body(event("delivered"))
    parsed = receive_sendgrid(
        inbound(body, signer.headers(body), at=NOW), Signer().public_key, tolerance=TOLERANCE
    )
    assert parsed.verdict == "bad_signature"
    assert parsed.events == []


def test_a_signed_timestamp_is_not_moved(signer: Signer) -> None:
    body = events_body(event("delivered"))
    headers = signer.headers(body, timestamp=NOW - 3600)
    headers[TIMESTAMP_HEADER] = str(NOW)  # the old signature with a fresh timestamp
    parsed = receive_sendgrid(
        inbound(body, headers, at=NOW), signer.public_key, tolerance=TOLERANCE
    )
    assert parsed.verdict == "bad_signature"


@pytest.mark.parametrize("skew", [-301, 301, -86_400, 10**9])
def test_timestamps_outside_the_tolerance_are_stale(signer: Signer, skew: int) -> None:
    body = events_body(event("delivered"))
    parsed = receive_sendgrid(
        inbound(body, signer.headers(body, NOW + skew), at=NOW),
        signer.public_key,
        tolerance=TOLERANCE,
    )
    assert parsed.verdict == "stale"
    assert parsed.events == []
    assert parsed.reason and ("ahead" in parsed.reason) == (skew > 0)


def test_the_tolerance_is_the_callers(signer: Signer) -> None:
    # SendGrid retries for 24 h: a config may accept a day-old signature.
    body = events_body(event("delivered"))
    parsed = receive_sendgrid(
        inbound(body, signer.headers(body, NOW - 80_000), at=NOW),
        signer.public_key,
        tolerance=timedelta(hours=24),
    )
    assert parsed.verdict == "verified"


@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b"\xff\xfe\x00", b"[" * 100_000, b'{"event": "delivered"}', b"null"],
)
def test_a_signed_body_that_is_not_an_event_array_is_unparseable(
    signer: Signer, body: bytes
) -> None:
    parsed = receive_sendgrid(
        inbound(body, signer.headers(body), at=NOW), signer.public_key, tolerance=TOLERANCE
    )
    assert parsed.verdict == "unparseable"
    assert parsed.events == []


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {SIGNATURE_HEADER: "", TIMESTAMP_HEADER: str(NOW)},
        {SIGNATURE_HEADER: "!!not base64!!", TIMESTAMP_HEADER: str(NOW)},
        {SIGNATURE_HEADER: base64.b64encode(b"\x30\x00").decode(), TIMESTAMP_HEADER: str(NOW)},
        {SIGNATURE_HEADER: "A" * 100_000, TIMESTAMP_HEADER: str(NOW)},
        {SIGNATURE_HEADER: VECTOR_SIGNATURE, TIMESTAMP_HEADER: "1e9"},
        {SIGNATURE_HEADER: VECTOR_SIGNATURE, TIMESTAMP_HEADER: "9" * 400},
        {SIGNATURE_HEADER: VECTOR_SIGNATURE, TIMESTAMP_HEADER: "١٦٠٠١١٢٥٠٢"},  # Arabic digits
    ],
)
def test_hostile_headers_are_bad_signatures(signer: Signer, headers: dict[str, str]) -> None:
    parsed = receive_sendgrid(
        inbound(b"[]", headers, at=NOW), signer.public_key, tolerance=TOLERANCE
    )
    assert parsed.verdict == "bad_signature"


@pytest.mark.parametrize("key", ["", "not base64", base64.b64encode(b"junk").decode()])
def test_an_unusable_configured_key_is_a_bad_signature(signer: Signer, key: str) -> None:
    body = events_body(event("delivered"))
    parsed = receive_sendgrid(inbound(body, signer.headers(body), at=NOW), key, tolerance=TOLERANCE)
    assert parsed.verdict == "bad_signature"


def test_a_key_on_another_curve_is_refused(signer: Signer) -> None:
    der = (
        ec.generate_private_key(ec.SECP384R1())
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    body = events_body(event("delivered"))
    parsed = receive_sendgrid(
        inbound(body, signer.headers(body), at=NOW),
        base64.b64encode(der).decode(),
        tolerance=TOLERANCE,
    )
    assert parsed.verdict == "bad_signature"


@pytest.mark.parametrize(
    ("fields", "kind", "suppress"),
    [
        ({"event": "processed"}, "sent", None),
        ({"event": "dropped", "reason": "Invalid"}, "failed", None),
        ({"event": "delivered", "response": "250 OK"}, "delivered", None),
        ({"event": "deferred", "attempt": "2"}, "deferred", None),
        ({"event": "bounce", "type": "bounce", "status": "5.1.1"}, "bounced", "hard_bounce"),
        ({"event": "bounce", "type": "blocked", "status": "5.7.1"}, "bounced", None),
        ({"event": "open"}, "opened", None),
        ({"event": "click", "url": "https://example.com/a"}, "clicked", None),
        ({"event": "spamreport"}, "complained", "complaint"),
        ({"event": "unsubscribe"}, "unsubscribed", "unsubscribed"),
        ({"event": "group_unsubscribe", "asm_group_id": 4}, "unsubscribed", "unsubscribed"),
        ({"event": "group_resubscribe", "asm_group_id": 4}, "resubscribed", None),
    ],
)
def test_every_event_type_maps(
    signer: Signer, fields: dict[str, Any], kind: str, suppress: str | None
) -> None:
    item = {**event(fields["event"]), **fields}
    body = events_body(item)
    parsed = receive_sendgrid(
        inbound(body, signer.headers(body), at=NOW), signer.public_key, tolerance=TOLERANCE
    )
    assert parsed.verdict == "verified", parsed.reason
    [receipt] = parsed.events
    assert (receipt.kind, receipt.suppress) == (kind, suppress)
    assert receipt.provider_event_id == item["sg_event_id"]
    assert receipt.message_id == uuid.UUID(int=7)
    assert receipt.provider_message_id == "sgmsg.filter-1"
    assert receipt.occurred_at == datetime.fromtimestamp(NOW - 30, UTC)
    assert receipt.detail["event"] == fields["event"]
    if fields["event"] == "click":
        assert receipt.detail["url"] == "https://example.com/a"
    if fields["event"] == "bounce":
        assert receipt.detail["type"] == fields["type"]
        assert receipt.detail["status"] == fields["status"]


def test_unknown_events_and_entries_that_are_not_events_are_skipped(signer: Signer) -> None:
    body = events_body(
        event("delivered"),
        event("a_future_event"),
        {"event": "delivered"},  # no sg_event_id: cannot be deduplicated
        "a string",  # type: ignore[arg-type]
        event("open", herald_message_id="not-a-uuid", timestamp="yesterday"),
    )
    parsed = receive_sendgrid(
        inbound(body, signer.headers(body), at=NOW), signer.public_key, tolerance=TOLERANCE
    )
    assert parsed.verdict == "verified"
    assert [receipt.kind for receipt in parsed.events] == ["delivered", "opened"]
    opened = parsed.events[1]
    assert opened.message_id is None
    assert opened.occurred_at == datetime.fromtimestamp(NOW, UTC)  # unreadable: arrival


def test_a_full_batch_is_read_and_a_bigger_one_refused_whole(signer: Signer) -> None:
    full = events_body(*(event("delivered", sg_event_id=f"e{n}") for n in range(MAX_EVENTS)))
    parsed = receive_sendgrid(
        inbound(full, signer.headers(full), at=NOW), signer.public_key, tolerance=TOLERANCE
    )
    assert parsed.verdict == "verified"
    assert len(parsed.events) == MAX_EVENTS
    assert len({receipt.provider_event_id for receipt in parsed.events}) == MAX_EVENTS

    over = events_body(*(event("delivered", sg_event_id=f"e{n}") for n in range(MAX_EVENTS + 1)))
    parsed = receive_sendgrid(
        inbound(over, signer.headers(over), at=NOW), signer.public_key, tolerance=TOLERANCE
    )
    assert parsed.verdict == "unparseable"
    assert parsed.events == []


def test_long_strings_are_cut(signer: Signer) -> None:
    body = events_body(
        event("dropped", reason="x" * 100_000, sg_event_id="i" * 5_000, sg_message_id="m" * 9_000)
    )
    parsed = receive_sendgrid(
        inbound(body, signer.headers(body), at=NOW), signer.public_key, tolerance=TOLERANCE
    )
    [receipt] = parsed.events
    assert receipt.detail["reason"] == "x" * MAX_DETAIL_CHARS
    assert len(receipt.provider_event_id) <= 200
    assert receipt.provider_event_id.startswith("sha256:")
    assert receipt.provider_message_id is not None
    assert len(receipt.provider_message_id) == MAX_DETAIL_CHARS
    json.dumps(receipt.detail)  # JSON-safe
