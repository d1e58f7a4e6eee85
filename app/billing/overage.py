"""Overage billed to Stripe's billing meter, through an outbox.

A tenant whose plan bills overage (`overage = "bill"` in the plans file) may send past its
monthly quota; what it sends past it is reported to the meter as one event per tenant,
period and usage flush:

- `record`, in the transaction that applies a flush to usage_counts (app/usage/service.py),
  and so exactly once per flush: per channel, what the flush took past the quota,
  max(0, after - quota) - max(0, before - quota) with `before` the count the flush found,
  summed per tenant and period (a plan has one price per 1,000, so one meter), written as a
  row of overage_reports whose identifier is the meter event's. Only with billing on: the
  caller says so (app/billing `enabled`).
- `report_due`, from the worker's `cron:report_overage` job: takes the reports due (a
  bounded batch, FOR UPDATE SKIP LOCKED, leased so that no other worker takes them while
  they are sent), sends each with `service.report_overage` stamped with the row's
  `created_at`, and marks it reported; a failure is tried again after an exponential
  backoff (capped at an hour). Every attempt carries the same identifier and Stripe refuses
  one it holds, so a report sent again after Stripe's answer was lost (a crash before our
  commit, a timeout) is billed once.

A report older than Stripe accepts (meter event timestamps reach 35 days back) or for a
tenant without a Stripe customer cannot be billed: it is marked failed with the reason,
logged and counted (`herald_overage_reports_failed_total`), never sent.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

import stripe
import structlog
from prometheus_client import Counter
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.billing.models import OverageReport
from app.billing.service import overage_identifier, report_overage
from app.db import utcnow
from app.settings import Settings
from app.tenants import plans

log = structlog.get_logger(__name__)

BATCH = 100  # reports taken per tick
# Stripe takes meter events whose timestamp is within the past 35 calendar days; an hour
# less leaves room for clock skew and a request in flight.
REPORTABLE_FOR = timedelta(days=35) - timedelta(hours=1)
# A taken report is not due again for this long: longer than a tick may run (the cron job's
# timeout), so a worker that died with it only delays it.
LEASE = timedelta(minutes=5)
BUDGET_SECONDS = 40.0  # a tick starts no report after this; the rest wait for the next one
BACKOFF_FIRST = timedelta(minutes=1)
BACKOFF_CAP = timedelta(hours=1)
ERROR_MAX = 1000  # characters of an error kept in last_error

REPORTS = Counter(
    "herald_overage_reports_total",
    "Overage reports to Stripe's billing meter, by outcome",
    ["outcome"],  # reported | retry | failed
)
FAILED = Counter(
    "herald_overage_reports_failed_total",
    "Overage reports given up for good, by reason",
    ["reason"],  # too_old | no_customer
)
MESSAGES = Counter(
    "herald_overage_messages_reported_total", "Messages past a quota reported to Stripe"
)


@dataclass(frozen=True)
class Change:
    """One usage_counts row a flush changed: the tenant's plan, the count after the flush
    and what the flush added to it."""

    tenant_id: uuid.UUID
    period: str  # YYYY-MM
    channel: str
    plan: str
    after: int
    added: int


def quantities(changes: Iterable[Change]) -> dict[tuple[uuid.UUID, str], int]:
    """Messages past the quota per (tenant, period), for tenants whose plan bills overage;
    only those with some."""
    totals: dict[tuple[uuid.UUID, str], int] = defaultdict(int)
    for change in changes:
        plan = plans.plan(change.plan)  # a plan the file lacks gets free's terms
        quota = plan.quota_for(change.channel)
        if plan.overage != "bill" or quota is None:
            continue
        before = change.after - change.added
        over = max(0, change.after - quota) - max(0, before - quota)
        if over > 0:
            totals[(change.tenant_id, change.period)] += over
    return {key: n for key, n in totals.items() if n > 0}


_RECORD = text(
    """
    INSERT INTO overage_reports (identifier, tenant_id, period, flush_id, quantity)
    SELECT r.identifier, r.tenant_id, r.period, :flush, r.quantity
      FROM unnest(CAST(:identifiers AS text[]), CAST(:tenants AS uuid[]),
                  CAST(:periods AS text[]), CAST(:quantities AS bigint[]))
           AS r(identifier, tenant_id, period, quantity)
    ON CONFLICT (identifier) DO NOTHING
    """
)


async def record(session: AsyncSession, *, flush_id: str, changes: Iterable[Change]) -> int:
    """Write the flush's overage to the outbox in the caller's transaction (the one applying
    the flush); the reports written."""
    found = quantities(changes)
    if not found:
        return 0
    keys = list(found)
    await session.execute(
        _RECORD,
        {
            "flush": flush_id,
            "identifiers": [overage_identifier(t, p, flush_id) for t, p in keys],
            "tenants": [t for t, _ in keys],
            "periods": [p for _, p in keys],
            "quantities": [found[k] for k in keys],
        },
    )
    return len(keys)


def backoff(attempts: int) -> timedelta:
    """The wait before the next try after `attempts` failed ones: 1, 2, 4 … minutes, at
    most an hour."""
    doublings = min(max(0, attempts - 1), 16)  # 2**16 minutes is past the cap already
    wait: timedelta = BACKOFF_FIRST * (2**doublings)
    return min(BACKOFF_CAP, wait)


Outcome = Literal["reported", "retried", "failed"]


@dataclass
class Tick:
    """What became of the reports a tick took."""

    reported: int = 0
    retried: int = 0
    failed: int = 0

    def add(self, outcome: Outcome) -> None:
        setattr(self, outcome, getattr(self, outcome) + 1)


_DUE = (
    OverageReport.reported_at.is_(None),
    OverageReport.failed_at.is_(None),
)


@dataclass(frozen=True)
class Due:
    """A report taken to be sent."""

    identifier: str
    tenant_id: uuid.UUID
    period: str
    flush_id: str
    quantity: int
    created_at: datetime
    attempts: int


async def _take(sessions: Callable[[], AsyncSession], *, now: datetime, limit: int) -> list[Due]:
    """Lease up to `limit` due reports, oldest due first; committed at once, so no
    transaction stays open while Stripe is called."""
    due = (
        select(OverageReport.identifier)
        .where(*_DUE, OverageReport.next_attempt_at <= now)
        .order_by(OverageReport.next_attempt_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    async with sessions() as session:
        taken = await session.execute(
            update(OverageReport)
            .where(OverageReport.identifier.in_(due.scalar_subquery()))
            .values(next_attempt_at=now + LEASE)
            .returning(
                OverageReport.identifier,
                OverageReport.tenant_id,
                OverageReport.period,
                OverageReport.flush_id,
                OverageReport.quantity,
                OverageReport.created_at,
                OverageReport.attempts,
            )
            .execution_options(synchronize_session=False)
        )
        reports = sorted((Due(*row) for row in taken.all()), key=lambda d: d.created_at)
        await session.commit()
    return reports


async def report_due(
    sessions: Callable[[], AsyncSession],
    client: stripe.StripeClient,
    settings: Settings,
    *,
    now: datetime | None = None,
    limit: int = BATCH,
    budget_seconds: float = BUDGET_SECONDS,
) -> Tick:
    """Send the overage reports that are due to Stripe's meter; what became of them."""
    now = now or utcnow()
    tick = Tick()
    reports = await _take(sessions, now=now, limit=limit)
    started = time.monotonic()
    for i, report in enumerate(reports):
        if time.monotonic() - started > budget_seconds:
            await _release(sessions, [r.identifier for r in reports[i:]], now=now)
            break
        async with sessions() as session:
            outcome = await _report(session, client, settings, report, now=now)
            await session.commit()
        tick.add(outcome)
    return tick


async def _report(
    session: AsyncSession,
    client: stripe.StripeClient,
    settings: Settings,
    report: Due,
    *,
    now: datetime,
) -> Outcome:
    """Send one report and write what came of it (the caller commits)."""
    where = OverageReport.identifier == report.identifier
    context = {
        "identifier": report.identifier,
        "tenant_id": str(report.tenant_id),
        "quantity": report.quantity,
    }
    if report.created_at <= now - REPORTABLE_FOR:
        return await _fail(session, report, "too_old", now=now, context=context)
    try:
        sent = await report_overage(
            session,
            client,
            settings,
            tenant_id=report.tenant_id,
            period=report.period,
            flush_id=report.flush_id,
            quantity=report.quantity,
            now=report.created_at,
        )
    except stripe.StripeError as error:
        attempts = report.attempts + 1
        message = f"{type(error).__name__}: {error.user_message or error}"[:ERROR_MAX]
        await session.execute(
            update(OverageReport)
            .where(where)
            .values(attempts=attempts, last_error=message, next_attempt_at=now + backoff(attempts))
        )
        REPORTS.labels("retry").inc()
        log.warning("overage report failed", attempts=attempts, error=message, **context)
        return "retried"
    if sent is None:
        return await _fail(session, report, "no_customer", now=now, context=context)
    await session.execute(
        update(OverageReport)
        .where(where)
        .values(reported_at=now, attempts=report.attempts + 1, last_error=None)
    )
    REPORTS.labels("reported").inc()
    MESSAGES.inc(report.quantity)
    log.info("overage reported", **context)
    return "reported"


REASONS = {
    "too_old": "older than Stripe takes meter events (35 days): not billed",
    "no_customer": "the tenant has no Stripe customer: not billed",
}


async def _fail(
    session: AsyncSession,
    report: Due,
    reason: str,
    *,
    now: datetime,
    context: dict[str, object],
) -> Outcome:
    await session.execute(
        update(OverageReport)
        .where(OverageReport.identifier == report.identifier)
        .values(failed_at=now, last_error=f"{reason}: {REASONS[reason]}")
    )
    REPORTS.labels("failed").inc()
    FAILED.labels(reason).inc()
    log.error(
        "overage report given up", reason=reason, created_at=str(report.created_at), **context
    )
    return "failed"


async def _release(
    sessions: Callable[[], AsyncSession], identifiers: list[str], *, now: datetime
) -> None:
    """Make reports taken but not sent this tick due again at once."""
    async with sessions() as session:
        await session.execute(
            update(OverageReport)
            .where(OverageReport.identifier.in_(identifiers), *_DUE)
            .values(next_attempt_at=now)
        )
        await session.commit()
