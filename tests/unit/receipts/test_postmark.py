"""Postmark webhooks: basic-auth credentials from the webhook URL, and every record type."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from app.receipts.postmark import receive_postmark
from tests.unit.receipts import inbound

NOW = 1_760_000_000
USER, PASSWORD = "herald", "s3cr3t:with:colons"
HERALD_ID = uuid.UUID(int=5)
MESSAGE_ID = "883953f4-6105-42a2-a16a-77a8eac79483"


def authorization(user: str = USER, password: str = PASSWORD) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def record(record_type: str = "Delivery", **fields: Any) -> dict[str, Any]:
    return {
        "RecordType": record_type,
        "MessageID": MESSAGE_ID,
        "Recipient": "john@example.com",
        "Metadata": {"herald_message_id": str(HERALD_ID)},
        "MessageStream": "outbound",
        **fields,
    }


def receive(raw: bytes | dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    data = raw if isinstance(raw, bytes) else json.dumps(raw).encode()
    return receive_postmark(
        inbound(data, authorization() if headers is None else headers, at=NOW), USER, PASSWORD
    )


@pytest.mark.parametrize(
    "headers",
    [
        {},
        authorization(password="wrong"),
        authorization(user="other"),
        {"authorization": "Bearer " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()},
        {"authorization": "Basic !!!"},
        {"authorization": "Basic " + "A" * 100_000},
        {"authorization": "Basic"},
    ],
)
def test_missing_or_wrong_credentials_are_refused(headers: dict[str, str]) -> None:
    parsed = receive(record("Delivery", DeliveredAt="2026-01-01T00:00:00Z"), headers)
    assert parsed.verdict == "bad_signature"
    assert parsed.events == []


def test_the_scheme_name_is_case_insensitive() -> None:
    headers = {"authorization": authorization()["authorization"].replace("Basic", "basic")}
    assert receive(record("Open", ReceivedAt="2026-01-01T00:00:00Z"), headers).verdict == (
        "verified"
    )


@pytest.mark.parametrize("raw", [b"", b"\xff", b"[" * 100_000, b"[]", b"{}", b'{"RecordType": 1}'])
def test_authentic_garbage_is_unparseable(raw: bytes) -> None:
    assert receive(raw).verdict == "unparseable"


@pytest.mark.parametrize(
    ("fields", "kind", "suppress"),
    [
        ({"RecordType": "Delivery", "DeliveredAt": "2026-01-02T03:04:05Z"}, "delivered", None),
        (
            {"RecordType": "Bounce", "Type": "HardBounce", "TypeCode": 1, "ID": 4323372036},
            "bounced",
            "hard_bounce",
        ),
        (
            {"RecordType": "Bounce", "Type": "SoftBounce", "TypeCode": 4096, "ID": 7},
            "bounced",
            None,
        ),
        ({"RecordType": "Bounce", "Type": "Transient", "ID": 8}, "bounced", None),
        ({"RecordType": "Bounce", "Type": "SpamNotification", "ID": 9}, "complained", None),
        ({"RecordType": "Bounce", "Type": "SpamComplaint", "ID": 10}, "complained", "complaint"),
        (
            {"RecordType": "SpamComplaint", "Type": "SpamComplaint", "ID": 11},
            "complained",
            "complaint",
        ),
        ({"RecordType": "Open", "ReceivedAt": "2026-01-02T03:04:05Z"}, "opened", None),
        (
            {"RecordType": "Click", "OriginalLink": "https://example.com/c", "ReceivedAt": "x"},
            "clicked",
            None,
        ),
        (
            {
                "RecordType": "SubscriptionChange",
                "SuppressSending": True,
                "SuppressionReason": "ManualSuppression",
            },
            "unsubscribed",
            "unsubscribed",
        ),
        (
            {
                "RecordType": "SubscriptionChange",
                "SuppressSending": True,
                "SuppressionReason": "HardBounce",
            },
            "unsubscribed",
            "hard_bounce",
        ),
        ({"RecordType": "SubscriptionChange", "SuppressSending": False}, "resubscribed", None),
    ],
)
def test_every_record_type_maps(fields: dict[str, Any], kind: str, suppress: str | None) -> None:
    parsed = receive(record(**fields))
    assert parsed.verdict == "verified", parsed.reason
    [receipt] = parsed.events
    assert (receipt.kind, receipt.suppress) == (kind, suppress)
    assert receipt.message_id == HERALD_ID
    assert receipt.provider_message_id == MESSAGE_ID
    assert receipt.detail["record_type"] == fields["RecordType"]
    if "ID" in fields:
        assert receipt.provider_event_id == str(fields["ID"])
    if "OriginalLink" in fields:
        assert receipt.detail["url"] == fields["OriginalLink"]


def test_records_without_a_bounce_id_are_keyed_by_message_type_and_time() -> None:
    [receipt] = receive(record("Delivery", DeliveredAt="2026-01-02T03:04:05-04:00")).events
    assert receipt.provider_event_id == f"{MESSAGE_ID}:Delivery:2026-01-02T03:04:05-04:00"
    assert receipt.occurred_at == datetime(2026, 1, 2, 7, 4, 5, tzinfo=UTC)
    # Postmark writes seven fractional digits.
    [opened] = receive(record("Open", ReceivedAt="2019-11-05T16:33:54.9070259Z")).events
    assert opened.occurred_at == datetime(2019, 11, 5, 16, 33, 54, 907025, tzinfo=UTC)
    [clicked] = receive(record("Click", ReceivedAt=["not", "a", "time"])).events
    assert clicked.provider_event_id == f"{MESSAGE_ID}:Click:"
    assert clicked.occurred_at == datetime.fromtimestamp(NOW, UTC)


def test_records_herald_does_not_track_verify_to_nothing() -> None:
    for fields in ({"RecordType": "Inbound"}, {"RecordType": "SubscriptionChange"}):
        parsed = receive(record(**fields))
        assert (parsed.verdict, parsed.events) == ("verified", [])
