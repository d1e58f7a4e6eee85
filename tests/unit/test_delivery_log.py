"""The delivery log's pure parts: cursors, time bounds as ids, "why not sent" in words, and
a message's timeline with its attempts and receipt events."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from app.ids import uuid7
from app.notifications import log
from app.notifications.models import Attempt, Message, Notification
from app.receipts.models import MessageEvent

T0 = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)


def message(**fields: object) -> Message:
    values: dict[str, object] = {
        "id": uuid7(),
        "notification_id": uuid7(),
        "tenant_id": uuid.uuid4(),
        "mode": "test",
        "recipient_id": uuid.uuid4(),
        "channel": "email",
        "address": "ann@example.com",
        "status": "sent",
        "attempts": 1,
        "rate_limited_attempts": 0,
        "provider": "sandbox",
        "created_at": T0 + timedelta(seconds=1),
        "updated_at": T0 + timedelta(seconds=3),
    }
    values.update(fields)
    return Message(**values)


def notification() -> Notification:
    return Notification(
        id=uuid7(), template_key="welcome", priority="normal", created_at=T0, template_version=1
    )


def test_cursors_round_trip_and_refuse_anything_else() -> None:
    plain = log.Cursor(uuid7())
    pair = log.Cursor(uuid7(), uuid7())
    assert log.Cursor.decode(plain.encode()) == plain
    assert log.Cursor.decode(pair.encode()) == pair
    for bad in ("", "!!", "AAAA", "A" * 65, plain.encode() + "AA", "é"):
        with pytest.raises(log.BadCursor):
            log.Cursor.decode(bad)


def test_time_bounds_are_ids_of_that_millisecond() -> None:
    before = datetime.now(UTC) - timedelta(milliseconds=5)
    made = uuid7()
    after = datetime.now(UTC) + timedelta(milliseconds=5)
    assert log.uuid7_floor(before) <= made < log.uuid7_floor(after)
    # Naive times are UTC; times far out are clamped, not an error.
    assert log.uuid7_floor(before.replace(tzinfo=None)) == log.uuid7_floor(before)
    assert log.uuid7_floor(datetime(1, 1, 1, tzinfo=UTC)) == log.uuid7_floor(datetime(1970, 1, 1))
    log.uuid7_floor(datetime(9999, 12, 31, tzinfo=UTC))


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"status": "skipped", "skip_reason": "suppressed"}, "suppression list"),
        ({"status": "skipped", "skip_reason": "opted_out"}, "opted out"),
        ({"status": "skipped", "skip_reason": "kill_switch"}, "kill switch"),
        ({"status": "skipped", "skip_reason": "no_address"}, "no address"),
        ({"status": "skipped", "skip_reason": "something_new"}, "something_new"),
        ({"status": "cancelled"}, "notification was cancelled"),
        ({"status": "cancelled", "skip_reason": "discarded"}, "discarded"),
        ({"status": "cancelled", "skip_reason": "erased"}, "erased"),
        ({"status": "failed", "error_class": "permanent"}, "refused it for good"),
        ({"status": "failed", "error_class": "config"}, "credentials"),
        ({"status": "failed", "error_class": "transient"}, "retry budget"),
        ({"status": "failed", "error_class": "rate_limited"}, "rate limit or quota"),
        ({"status": "failed", "error_class": "render"}, "could not be rendered"),
        ({"status": "bounced"}, "bounced"),
        ({"status": "complained"}, "spam"),
        ({"status": "undelivered"}, "could not deliver"),
        ({"status": "retrying"}, "try again"),
    ],
)
def test_why_not_sent_in_words(fields: dict[str, object], words: str) -> None:
    said = log.why_not_sent(message(**fields))
    assert said is not None
    assert words in said


def test_sent_and_delivered_messages_need_no_excuse() -> None:
    for status in ("sent", "delivered", "opened", "clicked", "sending"):
        assert log.why_not_sent(message(status=status)) is None


def test_the_timeline_tells_attempts_and_receipts_in_order() -> None:
    m = message(status="bounced", sent_at=T0 + timedelta(seconds=4))
    attempts = [
        Attempt(
            n=1,
            provider="sendgrid",
            started_at=T0 + timedelta(seconds=2),
            latency_ms=140,
            outcome="failed",
            error_class="transient",
            status_code=503,
            error="provider unavailable",
        ),
        Attempt(
            n=2,
            provider="sendgrid",
            started_at=T0 + timedelta(seconds=4),
            latency_ms=90,
            outcome="sent",
            status_code=202,
        ),
    ]
    events = [
        MessageEvent(
            kind="bounced",
            occurred_at=T0 + timedelta(seconds=9),
            created_at=T0 + timedelta(seconds=10),
            applied=True,
            detail={},
        ),
        MessageEvent(
            kind="delivered",
            occurred_at=T0 + timedelta(seconds=6),
            created_at=T0 + timedelta(seconds=11),
            applied=False,
            detail={},
        ),
    ]
    entries = log.timeline(m, notification(), attempts, events)
    assert [e.title for e in entries] == [
        "Accepted",
        "Dispatched",
        "Attempt 1: failed",
        "Attempt 2: sent",
        "Receipt: delivered",
        "Receipt: bounced",
    ]
    failed = entries[2]
    assert failed.tone == "bad"
    assert failed.detail == "provider unavailable"
    assert failed.facts == {
        "Provider": "sendgrid",
        "Latency": "140 ms",
        "Status code": "503",
        "Error class": "transient",
    }
    assert entries[4].detail.startswith("Recorded; it did not change")
    assert entries[5].tone == "bad"


def test_a_skipped_message_says_why_where_it_was_dispatched() -> None:
    m = message(status="skipped", skip_reason="opted_out", provider=None, attempts=0)
    entries = log.timeline(m, notification(), [], [])
    assert [e.title for e in entries] == ["Accepted", "Skipped: opted out"]
    assert "opted out" in entries[1].detail
    assert entries[1].tone == "warn"


def test_a_dead_letter_ends_its_timeline() -> None:
    m = message(status="failed", error_class="permanent")
    entries = log.timeline(m, notification(), [], [])
    assert entries[-1].title == "Dead-lettered"
    assert "dead-letter queue" in entries[-1].detail
