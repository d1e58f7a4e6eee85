"""Mailgun webhooks: hex HMAC-SHA256 over timestamp + token, made here as Mailgun's
documentation states it; the token as dedup key; every event mapped."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from app.receipts.mailgun import receive_mailgun
from tests.unit.receipts import inbound

KEY = "key-7f3b2c9d4e5f6a7b8c9d0e1f2a3b4c5d"
NOW = 1_760_000_000
TOLERANCE = timedelta(minutes=5)
HERALD_ID = uuid.UUID(int=42)


def body(
    event: dict[str, Any] | None = None,
    *,
    timestamp: int = NOW,
    token: str = "a8ce0edb2dd8301dee6c2405235584e45aa91d1e9f979f3de0",
    key: str = KEY,
) -> bytes:
    signature = hmac.new(key.encode(), f"{timestamp}{token}".encode(), hashlib.sha256)
    return json.dumps(
        {
            "signature": {
                "timestamp": str(timestamp),
                "token": token,
                "signature": signature.hexdigest(),
            },
            "event-data": event if event is not None else event_data("delivered"),
        }
    ).encode()


def event_data(name: str = "delivered", **fields: Any) -> dict[str, Any]:
    return {
        "event": name,
        "id": "CPgfbmQMTCKtHW6uIWtuVe",
        "timestamp": NOW - 12.5,
        "log-level": "info",
        "message": {"headers": {"message-id": "20130503182626.18666.16540@herald.example"}},
        "user-variables": {"herald_message_id": str(HERALD_ID)},
        **fields,
    }


def receive(raw: bytes, *, at: int = NOW, key: str = KEY) -> Any:
    return receive_mailgun(inbound(raw, at=at), key, tolerance=TOLERANCE)


def test_a_signed_event_verifies_and_reads() -> None:
    parsed = receive(body())
    assert parsed.verdict == "verified", parsed.reason
    [receipt] = parsed.events
    assert receipt.kind == "delivered"
    assert receipt.provider_event_id == "a8ce0edb2dd8301dee6c2405235584e45aa91d1e9f979f3de0"
    assert receipt.message_id == HERALD_ID
    assert receipt.provider_message_id == "20130503182626.18666.16540@herald.example"
    assert receipt.occurred_at == datetime.fromtimestamp(NOW - 12.5, UTC)


def test_the_signature_covers_timestamp_and_token_only() -> None:
    # The event itself is not signed by Mailgun: what protects it is that a token can be
    # used once (the dedup key) within the tolerance.
    original = json.loads(body())
    original["signature"]["token"] = "b" * 50
    assert receive(json.dumps(original).encode()).verdict == "bad_signature"
    original = json.loads(body())
    original["signature"]["timestamp"] = str(NOW + 1)
    assert receive(json.dumps(original).encode()).verdict == "bad_signature"


def test_another_domains_key_is_refused() -> None:
    parsed = receive(body(key="key-another"))
    assert parsed.verdict == "bad_signature"
    assert parsed.events == []


@pytest.mark.parametrize("skew", [-301, 301, -7200, 10**10])
def test_timestamps_outside_the_tolerance_are_stale(skew: int) -> None:
    parsed = receive(body(timestamp=NOW + skew))
    assert parsed.verdict == "stale"
    assert parsed.events == []


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\xff\xfe",
        b"[" * 100_000,
        b"[]",
        b'{"signature": "x"}',
        b'{"signature": {"timestamp": "1", "token": "t"}}',
        b'{"signature": {"timestamp": "-1", "token": "t", "signature": "00"}}',
        b'{"signature": {"timestamp": "1760000000", "token": "", "signature": "00"}}',
        json.dumps(
            {"signature": {"timestamp": str(NOW), "token": "t" * 10_000, "signature": "0"}}
        ).encode(),
    ],
)
def test_hostile_bodies_are_bad_signatures(raw: bytes) -> None:
    assert receive(raw).verdict == "bad_signature"


@pytest.mark.parametrize("event", [{}, {"event": 5}, {"no": "event"}])
def test_a_signed_body_without_an_event_is_unparseable(event: dict[str, Any]) -> None:
    assert receive(body(event)).verdict == "unparseable"


def test_a_signed_body_with_event_data_not_an_object_is_unparseable() -> None:
    raw = json.loads(body())
    raw["event-data"] = ["delivered"]
    assert receive(json.dumps(raw).encode()).verdict == "unparseable"


@pytest.mark.parametrize(
    ("fields", "kind", "suppress"),
    [
        ({"event": "accepted"}, "deferred", None),
        ({"event": "delivered"}, "delivered", None),
        (
            {"event": "failed", "severity": "permanent", "reason": "bounce"},
            "bounced",
            "hard_bounce",
        ),
        ({"event": "failed", "severity": "temporary", "reason": "generic"}, "deferred", None),
        ({"event": "rejected"}, "failed", None),
        ({"event": "opened"}, "opened", None),
        ({"event": "clicked", "url": "https://example.com/b"}, "clicked", None),
        ({"event": "unsubscribed"}, "unsubscribed", "unsubscribed"),
        ({"event": "complained"}, "complained", "complaint"),
    ],
)
def test_every_event_maps(fields: dict[str, Any], kind: str, suppress: str | None) -> None:
    parsed = receive(body(event_data(**fields)))
    assert parsed.verdict == "verified", parsed.reason
    [receipt] = parsed.events
    assert (receipt.kind, receipt.suppress) == (kind, suppress)
    assert receipt.detail["event"] == fields["event"]
    if "severity" in fields:
        assert receipt.detail["severity"] == fields["severity"]
    if "url" in fields:
        assert receipt.detail["url"] == fields["url"]


def test_a_permanent_failure_keeps_the_smtp_reply() -> None:
    event = event_data(
        "failed",
        severity="permanent",
        **{"delivery-status": {"code": 550, "message": "5.1.1 No such user"}},
    )
    [receipt] = receive(body(event)).events
    assert receipt.detail["code"] == 550
    assert receipt.detail["message"] == "5.1.1 No such user"


def test_events_herald_does_not_track_verify_to_nothing() -> None:
    parsed = receive(body(event_data("stored")))
    assert (parsed.verdict, parsed.events) == ("verified", [])


def test_missing_or_mangled_ids_and_times_fall_back() -> None:
    event = {"event": "opened", "timestamp": "soon", "user-variables": {"herald_message_id": 7}}
    [receipt] = receive(body(event)).events
    assert receipt.message_id is None
    assert receipt.provider_message_id is None
    assert receipt.occurred_at == datetime.fromtimestamp(NOW, UTC)
