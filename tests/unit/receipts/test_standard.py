"""Receipts signed as Standard Webhooks: the published vector, key rotation, the tolerance
both ways, and the body format of app/receipts/standard.py."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from app.providers.standard_webhooks import generate_secret
from app.receipts.standard import receive_standard
from tests.unit.receipts import inbound

NOW = 1_760_000_000
TOLERANCE = timedelta(minutes=5)
SECRET = generate_secret()
HERALD_ID = uuid.UUID(int=77)

# PROVIDERS.md, from the Standard Webhooks specification.
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def headers(
    raw: bytes, *, secret: str = SECRET, webhook_id: str = "msg_1", timestamp: int = NOW
) -> dict[str, str]:
    signature = Webhook(secret).sign(webhook_id, datetime.fromtimestamp(timestamp, UTC), raw)
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }


def payload(kind: str, **data: Any) -> bytes:
    return json.dumps(
        {"type": f"message.{kind}", "data": {"message_id": str(HERALD_ID), **data}}
    ).encode()


def receive(raw: bytes, head: dict[str, str], *, secrets: list[str] | None = None) -> Any:
    return receive_standard(inbound(raw, head, at=NOW), secrets or [SECRET], tolerance=TOLERANCE)


def test_the_published_vector_verifies() -> None:
    head = {
        "webhook-id": VECTOR_ID,
        "webhook-timestamp": str(VECTOR_TIMESTAMP),
        "webhook-signature": VECTOR_SIGNATURE,
    }
    parsed = receive_standard(
        inbound(VECTOR_BODY, head, at=VECTOR_TIMESTAMP + 60), [VECTOR_SECRET], tolerance=TOLERANCE
    )
    # Authentic, but not a receipt.
    assert parsed.verdict == "unparseable"
    forged = receive_standard(
        inbound(VECTOR_BODY.replace(b"4", b"5"), head, at=VECTOR_TIMESTAMP),
        [VECTOR_SECRET],
        tolerance=TOLERANCE,
    )
    assert forged.verdict == "bad_signature"


def test_a_receipt_verifies_and_reads() -> None:
    raw = payload("delivered", provider_message_id="ext-1", reason="250 OK")
    parsed = receive(raw, headers(raw, webhook_id="msg_abc"))
    assert parsed.verdict == "verified", parsed.reason
    [receipt] = parsed.events
    assert receipt.kind == "delivered"
    assert receipt.provider_event_id == "msg_abc"
    assert receipt.message_id == HERALD_ID
    assert receipt.provider_message_id == "ext-1"
    assert receipt.occurred_at == datetime.fromtimestamp(NOW, UTC)
    assert receipt.detail == {"type": "message.delivered", "reason": "250 OK"}
    assert receipt.suppress is None


def test_every_listed_signature_and_every_secret_is_tried() -> None:
    raw = payload("opened")
    old, new = generate_secret(), generate_secret()
    signed_old = headers(raw, secret=old)
    signed_new = headers(raw, secret=new)
    both = f"v1,bm90IGl0 {signed_old['webhook-signature']} {signed_new['webhook-signature']}"
    assert receive(raw, {**signed_new, "webhook-signature": both}, secrets=[new]).verdict == (
        "verified"
    )
    assert receive(raw, signed_old, secrets=[new, old]).verdict == "verified"
    assert receive(raw, signed_old, secrets=[new]).verdict == "bad_signature"
    assert receive(raw, signed_old, secrets=["not a whsec secret"]).verdict == "bad_signature"


def test_a_tampered_body_id_or_timestamp_is_refused() -> None:
    raw = payload("delivered")
    head = headers(raw)
    assert receive(payload("bounced"), head).verdict == "bad_signature"
    assert receive(raw, {**head, "webhook-id": "msg_2"}).verdict == "bad_signature"
    assert receive(raw, {**head, "webhook-timestamp": str(NOW + 1)}).verdict == "bad_signature"


@pytest.mark.parametrize("skew", [-301, 301, -86_400, 10**10])
def test_timestamps_outside_the_tolerance_are_stale(skew: int) -> None:
    raw = payload("delivered")
    assert receive(raw, headers(raw, timestamp=NOW + skew)).verdict == "stale"


@pytest.mark.parametrize(
    "head",
    [
        {},
        {"webhook-id": "m", "webhook-timestamp": str(NOW)},
        {"webhook-id": "m", "webhook-timestamp": "soon", "webhook-signature": "v1,x"},
        {"webhook-id": "m", "webhook-timestamp": "9" * 500, "webhook-signature": "v1,x"},
        {"webhook-id": "m", "webhook-timestamp": str(NOW), "webhook-signature": "v1,x " * 10_000},
    ],
)
def test_hostile_headers_are_bad_signatures(head: dict[str, str]) -> None:
    assert receive(payload("sent"), head).verdict == "bad_signature"


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\xff\xfe",
        b"[" * 100_000,
        b"[]",
        json.dumps([json.loads(payload("sent"))]).encode(),  # one event per request
        b'{"type": "message.exploded", "data": {}}',
        b'{"type": "delivered", "data": {}}',
        b'{"type": "message.delivered"}',
        b'{"type": "message.delivered", "data": []}',
    ],
)
def test_authentic_bodies_not_in_the_format_are_unparseable(raw: bytes) -> None:
    assert receive(raw, headers(raw)).verdict == "unparseable"


@pytest.mark.parametrize(
    ("kind", "suppress"),
    [
        ("sent", None),
        ("deferred", None),
        ("delivered", None),
        ("opened", None),
        ("clicked", None),
        ("bounced", "hard_bounce"),
        ("complained", "complaint"),
        ("undelivered", None),
        ("failed", None),
        ("unsubscribed", "unsubscribed"),
        ("resubscribed", None),
    ],
)
def test_every_kind_and_its_suppression(kind: str, suppress: str | None) -> None:
    raw = payload(kind, suppress=True)
    [receipt] = receive(raw, headers(raw)).events
    assert (receipt.kind, receipt.suppress) == (kind, suppress)
    raw = payload(kind)
    [receipt] = receive(raw, headers(raw)).events
    assert (receipt.kind, receipt.suppress) == (kind, None)


def test_the_body_timestamp_and_a_bad_message_id() -> None:
    raw = json.dumps(
        {
            "type": "message.bounced",
            "timestamp": "2026-01-02T03:04:05+01:00",
            "data": {"message_id": "not-a-uuid", "suppress": "yes"},
        }
    ).encode()
    [receipt] = receive(raw, headers(raw, webhook_id="w" * 300)).events
    assert receipt.occurred_at == datetime(2026, 1, 2, 2, 4, 5, tzinfo=UTC)
    assert receipt.message_id is None
    assert receipt.suppress is None  # only `true` suppresses
    assert receipt.provider_event_id.startswith("sha256:")
