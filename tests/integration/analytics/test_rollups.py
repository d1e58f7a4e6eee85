"""The overview's rollups, kept by triggers on messages, equal a direct count of the messages
after dispatch, deliveries, a retry, a DLQ replay and a deletion; they survive compaction;
and one tenant's or mode's figures never include another's."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.analytics import rollups
from app.analytics.models import MessageRollup
from app.analytics.service import Overview, overview
from app.delivery.service import Deliverer
from app.notifications.dispatch import dispatch
from app.notifications.models import Message, Notification
from app.runtime import ServiceUrls
from jobs.cron import compact_rollups
from tests.send_path import notify, put_recipient, put_template, workers
from tests.support import TenantKey, key_of, settings_for, unmetered_renderer

CONTENT = {"email": {"subject": "Hi", "text": "Hello"}, "sms": {"text": "Hello"}}
# The sandbox sends to the first, refuses the second for good and the third for now.
RECIPIENTS = {
    "ok": {"email": "ok@example.com", "phone": "+14155550100"},
    "bad": {"email": "fail@sandbox.herald"},
    "flaky": {"email": "transient@sandbox.herald"},
}
PENDING = ("queued", "sending", "retrying")
SENT = ("sent", "delivered", "opened", "clicked", "undelivered", "bounced", "complained")


@pytest.fixture
async def deliverer(service_urls: ServiceUrls) -> AsyncIterator[Deliverer]:
    settings = settings_for(service_urls.database_url, service_urls.redis_url)
    async with workers(settings) as ctx:
        yield ctx["deliverer"]


async def sender_of(
    client: httpx.AsyncClient, session: AsyncSession, tenant: TenantKey
) -> TenantKey:
    """A test key (the sandbox) of `tenant` with a template for e-mail and SMS and three
    recipients."""
    key = await key_of(session, tenant, "test")
    await put_template(client, key, "hello", CONTENT)
    for external_id, fields in RECIPIENTS.items():
        await put_recipient(client, key, external_id, **fields)
    return key


async def dispatched(
    client: httpx.AsyncClient, session: AsyncSession, key: TenantKey, **body: object
) -> list[uuid.UUID]:
    accepted = await notify(client, key, template="hello", to=list(RECIPIENTS), **body)
    notification_id = uuid.UUID(accepted["id"])
    await dispatch(session, notification_id=notification_id, renderer=unmetered_renderer())
    await session.commit()
    ids = await session.scalars(
        select(Message.id).where(Message.notification_id == notification_id).order_by(Message.id)
    )
    return list(ids)


async def figures(session: AsyncSession, tenant_id: uuid.UUID, mode: str = "test") -> Overview:
    today = datetime.now(UTC).date()
    found = await overview(session, tenant_id=tenant_id, mode=mode, today=today)
    await session.commit()
    return found


async def assert_matches_messages(session: AsyncSession, key: TenantKey) -> Overview:
    """The rollups' states (pending, in the DLQ) and today's flows, against the messages."""
    rows = (
        await session.execute(
            select(Message.channel, Message.status, Notification.priority, func.count())
            .join(Notification, Notification.id == Message.notification_id)
            .where(Message.tenant_id == key.tenant_id, Message.mode == key.mode)
            .group_by(Message.channel, Message.status, Notification.priority)
        )
    ).all()
    found = await figures(session, key.tenant_id, key.mode)
    pending: Counter[str] = Counter()
    pending_by_channel: Counter[str] = Counter()
    in_dlq: Counter[str] = Counter()
    for channel, status, priority, n in rows:
        if status in PENDING:
            pending[priority] += n
            pending_by_channel[channel] += n
        if status == "failed":
            in_dlq[channel] += n
    assert {p: n for p, n in found.pending.items() if n} == dict(pending)
    assert found.pending_by_channel == dict(pending_by_channel)
    assert found.in_dlq_by_channel == dict(in_dlq)
    assert found.in_dlq == sum(in_dlq.values())
    return found


async def test_rollups_follow_the_send_path(
    client: httpx.AsyncClient,
    session: AsyncSession,
    tenant: TenantKey,
    other_tenant: TenantKey,
    deliverer: Deliverer,
) -> None:
    key = await sender_of(client, session, tenant)
    ids = await dispatched(client, session, key, channels=["email", "sms"], priority="low")
    # Three e-mails, three SMS, of which two skipped (only "ok" has a phone): all accepted.
    assert len(ids) == 6
    found = await assert_matches_messages(session, key)
    assert found.today_totals.accepted == 6
    assert found.today_by_channel["email"].accepted == 3
    assert found.today_by_channel["sms"].accepted == 3
    assert found.pending == {"high": 0, "normal": 0, "low": 4}
    assert found.today_totals.sent == 0

    await deliverer.deliver(ids)
    found = await assert_matches_messages(session, key)
    today = found.today_totals
    assert (today.sent, today.failed, today.dead_lettered) == (2, 1, 1)
    assert found.today_by_channel["email"].sent == 1
    assert found.today_by_channel["sms"].sent == 1
    assert found.pending == {"high": 0, "normal": 0, "low": 1}  # the flaky one, retrying
    assert found.in_dlq_by_channel == {"email": 1}
    # Every message sent has its accept→sent latency, in a bucket the real one falls in.
    assert sum(today.latency.values()) == 2
    latencies = await session.execute(
        select(Message.sent_at - Notification.created_at)
        .join(Notification, Notification.id == Message.notification_id)
        .where(Message.id.in_(ids), Message.sent_at.is_not(None))
    )
    expected = Counter(rollups.bucket_of(gap.total_seconds() * 1000) for (gap,) in latencies)
    assert Counter(today.latency) == expected
    assert today.p50_ms is not None and today.p95_ms is not None
    assert today.p50_ms <= today.p95_ms
    assert today.delivery_rate == pytest.approx(2 / 3)

    # A replay takes the dead letter out of the DLQ (its dead-lettering stays counted).
    [failed] = await session.scalars(
        select(Message.id).where(Message.id.in_(ids), Message.status == "failed")
    )
    await session.commit()
    replayed = await client.post("/v1/dlq/replay", headers=key.headers, json={"ids": [str(failed)]})
    assert replayed.json()["replayed"] == 1, replayed.text
    found = await assert_matches_messages(session, key)
    assert found.in_dlq == 0
    assert found.today_totals.dead_lettered == 1
    assert found.pending["low"] == 2

    # Folding the deltas changes no figure, and leaves one row per key.
    before = await figures(session, key.tenant_id)
    await compact_rollups({"sessions": lambda: _session_of(session)})
    after = await figures(session, key.tenant_id)
    assert after == before
    deltas = await session.scalar(
        select(func.count())
        .select_from(MessageRollup)
        .where(MessageRollup.tenant_id == key.tenant_id, MessageRollup.folded.is_(False))
    )
    await session.commit()
    assert deltas == 0

    # Messages deleted leave the states (their notification's deletion takes them along).
    await session.execute(delete(Message).where(Message.id.in_(ids), Message.status.in_(PENDING)))
    await session.commit()
    found = await assert_matches_messages(session, key)
    assert not any(found.pending.values())
    assert found.today_totals.accepted == 6  # what happened stays counted

    # Neither the other tenant nor the live mode sees any of it.
    assert (await figures(session, other_tenant.tenant_id)).empty
    assert (await figures(session, key.tenant_id, "live")).empty
    assert not found.empty


async def test_scheduled_notifications_count_latency_from_their_send_at(
    client: httpx.AsyncClient, session: AsyncSession, tenant: TenantKey, deliverer: Deliverer
) -> None:
    """A notification sent later is measured from the time it was due, not accepted."""
    key = await sender_of(client, session, tenant)
    ids = await dispatched(client, session, key, channels=["email"])
    due = datetime.now(UTC)
    # As if it had been accepted an hour ago for now: its latency is counted from `due`.
    [notification_id] = set(
        await session.scalars(select(Message.notification_id).where(Message.id.in_(ids)))
    )
    notification_row = await session.get(Notification, notification_id)
    assert notification_row is not None
    notification_row.created_at = due - timedelta(hours=1)
    notification_row.send_at = due
    await session.commit()
    await deliverer.deliver(ids)
    found = await figures(session, key.tenant_id)
    assert sum(found.today_totals.latency.values()) == 1
    p95 = found.today_totals.p95_ms
    assert p95 is not None and p95 < 60_000  # seconds after send_at, not an hour


class _session_of:
    """An async context manager handing out the test's session (compaction commits it)."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def __aenter__(self) -> AsyncSession:
        return self.session

    async def __aexit__(self, *_: object) -> None:
        return None


def test_buckets_and_percentiles() -> None:
    """The buckets are sqrt(2) apart, and a percentile falls in the bucket of its sample."""
    for milliseconds in (0.5, 3, 70, 1_500, 45_000, 7_200_000):
        bucket = rollups.bucket_of(milliseconds)
        lower, upper = rollups.bucket_bounds(bucket)
        assert lower < milliseconds <= upper or (bucket == 0 and milliseconds <= 1)
    histogram = Counter(rollups.bucket_of(ms) for ms in [100] * 50 + [2_000] * 45 + [60_000] * 5)
    p50 = rollups.percentile(dict(histogram), 0.5)
    p95 = rollups.percentile(dict(histogram), 0.95)
    assert p50 is not None and 100 / 1.42 < p50 <= 100 * 1.42
    assert p95 is not None and 2_000 / 1.42 < p95 <= 2_000 * 1.42
    assert rollups.percentile({}, 0.5) is None


async def test_a_tenant_that_sent_only_before_the_window_is_not_new(
    session: AsyncSession, tenant: TenantKey
) -> None:
    """Its window is all zeros, but it is not shown how to send a first notification."""
    assert (await figures(session, tenant.tenant_id, "live")).empty
    long_ago = datetime.now(UTC).date() - timedelta(days=90)
    session.add(
        MessageRollup(
            tenant_id=tenant.tenant_id, mode="live", day=long_ago, channel="email",
            measure="sent", bucket=0, n=5, folded=True,
        )
    )  # fmt: skip
    await session.commit()
    found = await figures(session, tenant.tenant_id, "live")
    assert not found.empty
    assert found.window_totals.sent == 0
