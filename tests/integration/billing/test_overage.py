"""Overage billed through the outbox: a usage flush writes what it took tenants of a billing
plan past their quota, once, in its own transaction; the worker's report job sends each
report to Stripe's billing meter (the local stand-in of Stripe) and marks it reported, tries
a failed one again later, and gives up on one Stripe would refuse. Stripe bills each
identifier once, however often a report is sent."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis
from sqlalchemy import text, update
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.billing import overage
from app.billing.client import stripe_client
from app.billing.models import BillingAccount
from app.billing.service import overage_identifier
from app.db import session_factory, utcnow
from app.runtime import ServiceUrls
from app.settings import Settings
from app.tenants.models import Tenant
from app.usage import service as usage
from app.usage.meter import Count, Meter, period_of
from jobs import cron, functions, queues
from tests.integration.billing.conftest import QUOTA
from tests.integration.billing.fake_stripe import FakeStripe
from tests.send_path import put_recipient, put_template, workers
from tests.support import TenantKey, key_of, make_tenant, settings_for

METER_EVENTS = "/v1/billing/meter_events"
INBOX = {"inbox": {"title": "Hi", "body": "Hello"}}


@pytest.fixture
async def redis(service_urls: ServiceUrls) -> AsyncIterator[Redis]:
    client = Redis.from_url(service_urls.redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def meter(redis: Redis) -> Meter:
    return Meter(redis)


@pytest.fixture
async def billing_ctx(
    billing_settings: Settings, engine: AsyncEngine, meter: Meter
) -> AsyncIterator[dict[str, Any]]:
    """What the worker's cron jobs are given, with billing on; pending usage flushed first
    (other tests' counts), and every report other tests left unsent set aside, so that only
    this test's reports are due."""
    ctx = {"settings": billing_settings, "sessions": session_factory(engine), "meter": meter}
    await cron.flush_usage(ctx)
    async with session_factory(engine)() as session:
        await session.execute(
            text(
                "UPDATE overage_reports SET failed_at = now(), last_error = 'set aside'"
                " WHERE reported_at IS NULL AND failed_at IS NULL"
            )
        )
        await session.commit()
    yield ctx


async def on_plan(session: AsyncSession, plan: str, *, customer: bool = False) -> TenantKey:
    """A tenant on `plan`; `customer`: with a Stripe customer, as a checkout leaves it."""
    tenant = await make_tenant(session, f"overage {uuid.uuid4().hex[:6]}")
    await session.execute(update(Tenant).where(Tenant.id == tenant.tenant_id).values(plan=plan))
    if customer:
        session.add(
            BillingAccount(tenant_id=tenant.tenant_id, customer_id=f"cus_{uuid.uuid4().hex[:14]}")
        )
    await session.commit()
    return tenant


async def count(meter: Meter, tenant: TenantKey, **channels: int) -> None:
    """Messages counted for the tenant this month, as dispatch counts them."""
    period = period_of(utcnow())
    await meter.record([Count(tenant.tenant_id, period, c, n) for c, n in channels.items()])


async def reports(engine: AsyncEngine, tenant: TenantKey) -> list[Row[Any]]:
    async with session_factory(engine)() as session:
        rows = await session.execute(
            text("SELECT * FROM overage_reports WHERE tenant_id = :t ORDER BY created_at"),
            {"t": tenant.tenant_id},
        )
        return list(rows.all())


def sent(fake: FakeStripe, identifier: str) -> list[dict[str, str]]:
    """The meter events Herald sent with this identifier, accepted or not."""
    return [c.form for c in fake.calls(METER_EVENTS) if c.form.get("identifier") == identifier]


def billed(fake: FakeStripe, identifier: str) -> int:
    """Events Stripe counts for this identifier: one at most, however often it was sent."""
    return int(identifier in fake.meter_events)


def failed_total(reason: str) -> float:
    found = REGISTRY.get_sample_value("herald_overage_reports_failed_total", {"reason": reason})
    return found or 0.0


# Recording: one report per tenant, period and flush, in the flush's transaction.


async def test_a_flush_past_the_quota_writes_one_report_for_the_tenant(
    billing_ctx: dict[str, Any], session: AsyncSession, engine: AsyncEngine, meter: Meter
) -> None:
    tenant = await on_plan(session, "metered")
    await count(meter, tenant, inbox=QUOTA + 2, email=QUOTA + 5, sms=40)  # sms: no quota
    assert await cron.flush_usage(billing_ctx) == 1
    [report] = await reports(engine, tenant)
    period = period_of(utcnow())
    # Both channels past their quota, summed: the plan has one price, so one meter event.
    assert report.quantity == 2 + 5
    assert report.period == period
    assert report.identifier == overage_identifier(tenant.tenant_id, period, report.flush_id)
    assert (report.reported_at, report.failed_at, report.attempts) == (None, None, 0)
    async with session_factory(engine)() as other:
        flushed = await other.scalar(
            text("SELECT count(*) FROM usage_flushes WHERE id = :id"), {"id": report.flush_id}
        )
    assert flushed == 1


async def test_a_flush_within_the_quota_writes_none(
    billing_ctx: dict[str, Any], session: AsyncSession, engine: AsyncEngine, meter: Meter
) -> None:
    tenant = await on_plan(session, "metered")
    await count(meter, tenant, inbox=QUOTA, email=QUOTA - 1)  # the quota's last message
    await cron.flush_usage(billing_ctx)
    assert await reports(engine, tenant) == []
    await count(meter, tenant, inbox=1)  # the first one past it
    await cron.flush_usage(billing_ctx)
    assert [r.quantity for r in await reports(engine, tenant)] == [1]


async def test_a_flush_across_the_quota_counts_only_what_is_past_it(
    billing_ctx: dict[str, Any], session: AsyncSession, engine: AsyncEngine, meter: Meter
) -> None:
    tenant = await on_plan(session, "metered")
    await count(meter, tenant, inbox=QUOTA - 3)
    await cron.flush_usage(billing_ctx)
    await count(meter, tenant, inbox=5)  # 3 within the quota, 2 past it
    await cron.flush_usage(billing_ctx)
    await count(meter, tenant, inbox=4)  # all past it
    await cron.flush_usage(billing_ctx)
    found = await reports(engine, tenant)
    assert [r.quantity for r in found] == [2, 4]
    assert len({r.flush_id for r in found}) == 2  # a report per flush, each its identifier


async def test_a_blocking_plan_or_billing_off_writes_no_report(
    billing_ctx: dict[str, Any],
    settings: Settings,
    session: AsyncSession,
    engine: AsyncEngine,
    meter: Meter,
) -> None:
    capped = await on_plan(session, "capped")
    await count(meter, capped, inbox=QUOTA + 5)
    await cron.flush_usage(billing_ctx)
    assert await reports(engine, capped) == []
    # Without Stripe keys the flush counts but records no overage.
    metered = await on_plan(session, "metered")
    await count(meter, metered, inbox=QUOTA + 5)
    off = {**billing_ctx, "settings": settings}
    assert await cron.flush_usage(off) == 1
    assert await reports(engine, metered) == []
    assert (
        await usage.flushed_counts(session, tenant_id=metered.tenant_id, period=period_of(utcnow()))
    ) == {"inbox": QUOTA + 5}


async def test_test_mode_never_bills(
    billing_ctx: dict[str, Any],
    client: httpx.AsyncClient,
    session: AsyncSession,
    service_urls: ServiceUrls,
    engine: AsyncEngine,
) -> None:
    """The same sends with a live and a test key, through the real dispatch job: only the
    live ones count toward the quota, and only they can be billed."""
    live = await on_plan(session, "metered")
    test = await key_of(session, live, "test")
    names = [f"r{i}" for i in range(QUOTA + 2)]
    ids = []
    for key in (live, test):
        await put_template(client, key, "hi", INBOX)
        for name in names:
            await put_recipient(client, key, name)
        body = {"template": "hi", "to": names, "channels": ["inbox"]}
        accepted = await client.post("/v1/notifications", headers=key.headers, json=body)
        assert accepted.status_code == 202, accepted.text
        ids.append(accepted.json()["id"])
    settings = settings_for(service_urls.database_url, service_urls.redis_url)
    async with workers(settings) as ctx:
        ctx["redis"] = await queues.connect(service_urls.redis_url)
        try:
            for notification_id in ids:
                await functions.dispatch(ctx, notification_id)
        finally:
            await ctx["redis"].aclose()
    await cron.flush_usage(billing_ctx)
    # Had the test messages counted, this one flush would hold twice QUOTA + 2.
    assert [r.quantity for r in await reports(engine, live)] == [2]


async def test_a_flush_applied_again_writes_no_second_report(
    billing_ctx: dict[str, Any], session: AsyncSession, engine: AsyncEngine, meter: Meter
) -> None:
    tenant = await on_plan(session, "metered")
    await count(meter, tenant, inbox=QUOTA + 3)
    # A crash after PostgreSQL committed the flush, before Redis forgot it: applied again.
    [pending] = await meter.rotate()
    sessions = billing_ctx["sessions"]
    assert await usage.apply(sessions, meter, pending, bill_overage=True) is True
    assert await usage.apply(sessions, meter, pending, bill_overage=True) is False
    assert await cron.flush_usage(billing_ctx) == 0  # PostgreSQL knows that id: skipped
    assert [(r.quantity, r.flush_id) for r in await reports(engine, tenant)] == [(3, pending)]


# Reporting: the cron job sends each report, once as Stripe counts it.


async def test_the_cron_job_reports_overage_once(
    billing_ctx: dict[str, Any],
    fake_stripe: FakeStripe,
    session: AsyncSession,
    engine: AsyncEngine,
    meter: Meter,
) -> None:
    tenant = await on_plan(session, "metered", customer=True)
    await count(meter, tenant, email=QUOTA + 4)
    await cron.flush_usage(billing_ctx)
    [report] = await reports(engine, tenant)
    assert await cron.report_overage(billing_ctx) == 1
    [event] = sent(fake_stripe, report.identifier)
    assert event["event_name"] == "herald_overage"
    assert event["payload[value]"] == "4"
    customer = await session.scalar(
        text("SELECT customer_id FROM billing_accounts WHERE tenant_id = :t"),
        {"t": tenant.tenant_id},
    )
    assert event["payload[stripe_customer_id]"] == customer
    # Stamped when the flush counted it, not when it was sent.
    assert event["timestamp"] == str(int(report.created_at.timestamp()))
    [done] = await reports(engine, tenant)
    assert done.reported_at is not None and done.attempts == 1 and done.last_error is None
    # Later ticks send nothing again.
    assert await cron.report_overage(billing_ctx, now=utcnow() + timedelta(hours=2)) == 0
    assert len(sent(fake_stripe, report.identifier)) == 1
    assert billed(fake_stripe, report.identifier) == 1


async def test_a_failed_report_is_tried_again_later_and_billed_once(
    billing_ctx: dict[str, Any],
    fake_stripe: FakeStripe,
    session: AsyncSession,
    engine: AsyncEngine,
    meter: Meter,
) -> None:
    tenant = await on_plan(session, "metered", customer=True)
    await count(meter, tenant, inbox=QUOTA + 6)
    await cron.flush_usage(billing_ctx)
    [report] = await reports(engine, tenant)
    fake_stripe.fail_next(METER_EVENTS, 1, status=500)
    now = utcnow()
    assert await cron.report_overage(billing_ctx, now=now) == 0
    [waiting] = await reports(engine, tenant)
    assert waiting.reported_at is None and waiting.failed_at is None
    assert waiting.attempts == 1 and "APIError" in waiting.last_error
    assert waiting.next_attempt_at == now + overage.backoff(1)
    assert billed(fake_stripe, report.identifier) == 0
    # Not before its time.
    assert await cron.report_overage(billing_ctx, now=now + timedelta(seconds=30)) == 0
    assert len(sent(fake_stripe, report.identifier)) == 1
    assert await cron.report_overage(billing_ctx, now=waiting.next_attempt_at) == 1
    [done] = await reports(engine, tenant)
    assert done.reported_at is not None and done.attempts == 2 and done.last_error is None
    assert len(sent(fake_stripe, report.identifier)) == 2
    assert billed(fake_stripe, report.identifier) == 1


async def test_a_report_sent_again_after_a_lost_commit_is_billed_once(
    billing_ctx: dict[str, Any],
    fake_stripe: FakeStripe,
    session: AsyncSession,
    engine: AsyncEngine,
    meter: Meter,
) -> None:
    tenant = await on_plan(session, "metered", customer=True)
    await count(meter, tenant, inbox=QUOTA + 1)
    await cron.flush_usage(billing_ctx)
    [report] = await reports(engine, tenant)
    assert await cron.report_overage(billing_ctx) == 1
    # Stripe took it, and the commit saying so never happened: the row is as it was.
    async with session_factory(engine)() as other:
        await other.execute(
            text(
                "UPDATE overage_reports SET reported_at = NULL, attempts = 0,"
                " next_attempt_at = now() WHERE identifier = :i"
            ),
            {"i": report.identifier},
        )
        await other.commit()
    assert await cron.report_overage(billing_ctx) == 1
    assert len(sent(fake_stripe, report.identifier)) == 2  # Stripe saw it twice
    assert billed(fake_stripe, report.identifier) == 1  # and bills it once
    [done] = await reports(engine, tenant)
    assert done.reported_at is not None and done.last_error is None


async def test_reports_stripe_would_refuse_are_given_up_with_the_reason(
    billing_ctx: dict[str, Any],
    fake_stripe: FakeStripe,
    session: AsyncSession,
    engine: AsyncEngine,
    meter: Meter,
) -> None:
    old = await on_plan(session, "metered", customer=True)
    nobody = await on_plan(session, "metered")  # on a billing plan, with no Stripe customer
    await count(meter, old, inbox=QUOTA + 2)
    await count(meter, nobody, inbox=QUOTA + 2)
    await cron.flush_usage(billing_ctx)
    [stale] = await reports(engine, old)
    [orphan] = await reports(engine, nobody)
    async with session_factory(engine)() as other:
        # Left unsent 36 days (a worker down that long): Stripe takes 35 days back.
        await other.execute(
            text(
                "UPDATE overage_reports SET created_at = now() - interval '36 days'"
                " WHERE identifier = :i"
            ),
            {"i": stale.identifier},
        )
        await other.commit()
    before = (failed_total("too_old"), failed_total("no_customer"))
    assert await cron.report_overage(billing_ctx) == 0
    assert (failed_total("too_old"), failed_total("no_customer")) == (
        before[0] + 1,
        before[1] + 1,
    )
    [too_old] = await reports(engine, old)
    [no_customer] = await reports(engine, nobody)
    assert too_old.failed_at is not None and too_old.last_error.startswith("too_old: ")
    assert no_customer.failed_at is not None and no_customer.last_error.startswith("no_customer")
    assert sent(fake_stripe, stale.identifier) == sent(fake_stripe, orphan.identifier) == []
    # Given up for good: later ticks leave them.
    assert await cron.report_overage(billing_ctx, now=utcnow() + timedelta(days=1)) == 0
    assert sent(fake_stripe, stale.identifier) == []


async def test_concurrent_reporters_send_each_report_once(
    billing_ctx: dict[str, Any],
    billing_settings: Settings,
    fake_stripe: FakeStripe,
    session: AsyncSession,
    engine: AsyncEngine,
    meter: Meter,
) -> None:
    tenants = [await on_plan(session, "metered", customer=True) for _ in range(6)]
    for tenant in tenants:
        await count(meter, tenant, inbox=QUOTA + 1)
    await cron.flush_usage(billing_ctx)
    identifiers = [(await reports(engine, t))[0].identifier for t in tenants]
    sessions = billing_ctx["sessions"]
    async with stripe_client(billing_settings) as client:
        assert client is not None
        ticks = await asyncio.gather(
            *(overage.report_due(sessions, client, billing_settings, limit=4) for _ in range(3))
        )
    assert sum(t.reported for t in ticks) == 6
    assert [len(sent(fake_stripe, i)) for i in identifiers] == [1] * 6


async def test_reports_a_tick_had_no_time_for_are_due_again_at_once(
    billing_ctx: dict[str, Any],
    billing_settings: Settings,
    fake_stripe: FakeStripe,
    session: AsyncSession,
    engine: AsyncEngine,
    meter: Meter,
) -> None:
    tenant = await on_plan(session, "metered", customer=True)
    await count(meter, tenant, inbox=QUOTA + 1)
    await cron.flush_usage(billing_ctx)
    [report] = await reports(engine, tenant)
    now = utcnow()
    async with stripe_client(billing_settings) as client:
        assert client is not None
        late = await overage.report_due(
            billing_ctx["sessions"], client, billing_settings, now=now, budget_seconds=-1
        )
        assert (late.reported, late.retried, late.failed) == (0, 0, 0)
        [left] = await reports(engine, tenant)
        assert left.next_attempt_at == now and left.attempts == 0  # not leased any more
        assert sent(fake_stripe, report.identifier) == []
        again = await overage.report_due(billing_ctx["sessions"], client, billing_settings)
    assert again.reported == 1
    assert billed(fake_stripe, report.identifier) == 1


async def test_with_billing_off_nothing_is_reported(
    billing_ctx: dict[str, Any],
    settings: Settings,
    fake_stripe: FakeStripe,
    session: AsyncSession,
    engine: AsyncEngine,
    meter: Meter,
) -> None:
    tenant = await on_plan(session, "metered", customer=True)
    await count(meter, tenant, inbox=QUOTA + 1)
    await cron.flush_usage(billing_ctx)
    before = len(fake_stripe.calls(METER_EVENTS))
    assert await cron.report_overage({**billing_ctx, "settings": settings}) == 0
    assert len(fake_stripe.calls(METER_EVENTS)) == before
    assert "cron:report_overage" in {job.name for job in cron.cron_jobs()}
