"""A dispatched notification's deliver jobs are due as its tenant's send bucket allows."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from app.notifications.dispatch import DeliveryBatch, Dispatched, Pace


def batch(channel: str, n: int = 100) -> DeliveryBatch:
    return DeliveryBatch(channel, "normal", [uuid.uuid4() for _ in range(n)])


def test_batches_past_the_burst_are_due_as_the_rate_makes_their_tokens() -> None:
    now = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    emails = [batch("email") for _ in range(10)]
    inbox = [batch("inbox") for _ in range(3)]
    done = Dispatched([*emails, *inbox], pace=Pace(rate=50, burst=500))
    jobs = done.jobs(uuid.uuid4(), now=now)
    due = [job.defer_until for job in jobs]
    # 500 go at once; then 100 more every 2 s at 50/s.
    later = [now + timedelta(seconds=s) for s in (2, 4, 6, 8)]
    assert due[:10] == [None] * 6 + later
    assert due[10:] == [None] * 3  # the inbox takes no tokens
    assert [job.id for job in jobs[:10]] == [
        f"deliver:{b.message_ids[0]}:100" for b in emails
    ]  # the ids do not change with the time: a second dispatch is refused as before


def test_without_a_pace_every_batch_is_due_at_once() -> None:
    jobs = Dispatched([batch("email") for _ in range(20)]).jobs(uuid.uuid4())
    assert {job.defer_until for job in jobs} == {None}
