"""Usage as tenants and the operator see it: the current period against the plan's quotas,
the flush of Redis's counts into PostgreSQL, and the rebuild of those counts from messages.

A message counts once, when dispatch writes it `queued` in live mode: not when it is skipped
(preferences, suppressions, a missing address) or its content failed to render, and never
again however often it is retried or replayed, since neither writes a message. `messages`
is therefore the truth the counters can always be recomputed from (`rebuild`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.billing import overage
from app.channels import CHANNELS
from app.db import utcnow
from app.tenants import plans
from app.tenants.models import Tenant
from app.usage.meter import Meter, next_period_start, period_of, period_start, total_key


@dataclass(frozen=True)
class ChannelUsage:
    channel: str
    used: int
    quota: int | None  # None: the plan sets no quota for this channel group
    remaining: int | None


@dataclass(frozen=True)
class Usage:
    """A tenant's current period: what `GET /v1/usage`, billing and the dashboard show."""

    tenant_id: uuid.UUID
    plan: str
    overage: str  # block | bill
    period: str  # YYYY-MM
    period_start: datetime
    resets_at: datetime
    channels: list[ChannelUsage]


async def flushed_counts(
    session: AsyncSession, *, tenant_id: uuid.UUID, period: str
) -> dict[str, int]:
    """What PostgreSQL holds for the tenant's period, per channel."""
    rows = await session.execute(
        text(
            "SELECT channel, count FROM usage_counts WHERE tenant_id = :tenant AND period = :period"
        ),
        {"tenant": tenant_id, "period": period_start(period)},
    )
    return {channel: int(count) for channel, count in rows.all()}


async def used(
    session: AsyncSession, meter: Meter, *, tenant_id: uuid.UUID, period: str
) -> dict[str, int]:
    """The period's counts per channel, seeding Redis's totals from PostgreSQL if needed."""
    found = await meter.used(tenant_id, period)
    if found is not None:
        return found
    await seed(session, meter, tenant_id=tenant_id, period=period)
    return await meter.used(tenant_id, period) or {}


async def seed(session: AsyncSession, meter: Meter, *, tenant_id: uuid.UUID, period: str) -> None:
    """Start the tenant's totals for the period (under the flush lock: see meter.py)."""
    token = await meter.lock()
    try:
        flushed = await flushed_counts(session, tenant_id=tenant_id, period=period)
        await meter.seed(tenant_id, period, flushed)
    finally:
        await meter.unlock(token)


async def current(
    session: AsyncSession, meter: Meter, *, tenant_id: uuid.UUID, now: datetime | None = None
) -> Usage:
    """The tenant's live usage this month, per channel group, against its plan."""
    tenant = await session.get(Tenant, tenant_id)
    plan = plans.plan(tenant.plan if tenant is not None else plans.FALLBACK_PLAN)
    plan_name = tenant.plan if tenant is not None and tenant.plan in plans.plan_names() else "free"
    period = period_of(now or utcnow())
    counts = await used(session, meter, tenant_id=tenant_id, period=period)
    channels = []
    for channel in CHANNELS:
        quota = plan.quota_for(channel)
        n = counts.get(channel, 0)
        remaining = None if quota is None else max(0, quota - n)
        channels.append(ChannelUsage(channel, n, quota, remaining))
    start = period_start(period)
    return Usage(
        tenant_id,
        plan_name,
        plan.overage,
        period,
        datetime(start.year, start.month, 1, tzinfo=UTC),
        next_period_start(period),
        channels,
    )


_APPLY = text(
    """
    INSERT INTO usage_counts (tenant_id, period, channel, count)
    SELECT c.tenant_id, c.period, c.channel, c.n
      FROM unnest(CAST(:tenants AS uuid[]), CAST(:periods AS date[]), CAST(:channels AS text[]),
                  CAST(:ns AS bigint[])) AS c(tenant_id, period, channel, n)
      JOIN tenants AS t ON t.id = c.tenant_id  -- a tenant deleted meanwhile: its counts go too
    ON CONFLICT (tenant_id, period, channel)
    DO UPDATE SET count = usage_counts.count + EXCLUDED.count
    """
)


# (tenant, period, channel): what a flush changed, for the quota warnings (warnings.py).
Touched = set[tuple[uuid.UUID, str, str]]
# _APPLY's upsert, giving back each row it changed: its count after, what this flush added,
# and the tenant's plan (the overage to bill is read from them, in the same transaction).
_APPLY_FLUSH = text(
    """
    WITH c AS (
        SELECT c.tenant_id, c.period, c.channel, c.n, t.plan
          FROM unnest(CAST(:tenants AS uuid[]), CAST(:periods AS date[]),
                      CAST(:channels AS text[]), CAST(:ns AS bigint[]))
               AS c(tenant_id, period, channel, n)
          JOIN tenants AS t ON t.id = c.tenant_id
    ), changed AS (
        INSERT INTO usage_counts (tenant_id, period, channel, count)
        SELECT tenant_id, period, channel, n FROM c
        ON CONFLICT (tenant_id, period, channel)
        DO UPDATE SET count = usage_counts.count + EXCLUDED.count
        RETURNING tenant_id, period, channel, count
    )
    SELECT changed.tenant_id, changed.period, changed.channel, c.plan, changed.count, c.n
      FROM changed JOIN c USING (tenant_id, period, channel)
    """
)


async def apply(
    sessions: Callable[[], AsyncSession],
    meter: Meter,
    flush_id: str,
    touched: Touched | None = None,
    *,
    bill_overage: bool = False,
) -> bool:
    """Add one flush's counts to PostgreSQL, once: False when it was applied before.

    `touched` gathers the flush's keys either way: a run that applied it and died before
    checking the warnings leaves them to this one. `bill_overage` (billing on): what the
    flush took tenants of a billing plan past their quota goes into the overage outbox in
    the same transaction (app/billing/overage.py)."""
    counts = await meter.flush_counts(flush_id)
    if touched is not None:
        touched.update((c.tenant_id, c.period, c.channel) for c in counts)
    async with sessions() as session:
        first = await session.scalar(
            text("INSERT INTO usage_flushes (id) VALUES (:id) ON CONFLICT DO NOTHING RETURNING id"),
            {"id": flush_id},
        )
        if first is None:
            return False
        if counts:
            changed = await session.execute(
                _APPLY_FLUSH,
                {
                    "tenants": [c.tenant_id for c in counts],
                    "periods": [period_start(c.period) for c in counts],
                    "channels": [c.channel for c in counts],
                    "ns": [c.n for c in counts],
                },
            )
            if bill_overage:
                changes = [
                    overage.Change(tenant, _period_name(period), channel, plan, after, added)
                    for tenant, period, channel, plan, after, added in changed.all()
                ]
                await overage.record(session, flush_id=flush_id, changes=changes)
        await session.commit()
    return True


async def flush(
    sessions: Callable[[], AsyncSession],
    meter: Meter,
    touched: Touched | None = None,
    *,
    bill_overage: bool = False,
) -> int:
    """Move Redis's counts into PostgreSQL, exactly once; how many flushes were applied.

    Also finishes the flushes an earlier run left behind (a crash after the rename, or after
    the commit): usage_flushes tells the ones PostgreSQL already has. `touched` gathers the
    (tenant, period, channel) keys of every flush seen; `bill_overage`: as for apply."""
    token = await meter.lock()
    applied = 0
    try:
        for flush_id in await meter.rotate():
            applied += await apply(sessions, meter, flush_id, touched, bill_overage=bill_overage)
            await meter.finish(flush_id)
    finally:
        await meter.unlock(token)
    return applied


# Queued for sending: neither skipped nor failed at render (dispatch writes those `failed`
# with error_class 'render'); whatever happened after (sent, retried, bounced, cancelled).
_REBUILD = """
    SELECT m.tenant_id, date_trunc('month', m.created_at AT TIME ZONE 'UTC')::date AS period,
           m.channel, count(*) AS n
      FROM messages AS m
     WHERE m.mode = 'live'
       AND m.status <> 'skipped'
       AND m.error_class IS DISTINCT FROM 'render'
       {scope}
     GROUP BY 1, 2, 3
"""


async def rebuild(
    sessions: Callable[[], AsyncSession],
    meter: Meter,
    *,
    tenant_id: uuid.UUID | None = None,
    period: str | None = None,
    bill_overage: bool = False,
) -> int:
    """Recompute usage_counts from `messages` (after a lost Redis, say) for one tenant, one
    period, or everything; rows written. Pending deltas are flushed first (`bill_overage`:
    as for apply), and Redis's totals of the scope dropped (the next read seeds them from
    what is rebuilt). Counts recorded while it runs may be counted twice: run it when
    dispatch is quiet, or for a past period. The recount itself bills no overage."""
    await flush(sessions, meter, bill_overage=bill_overage)
    scope, params = "", dict[str, Any]()
    if tenant_id is not None:
        scope += " AND m.tenant_id = :tenant"
        params["tenant"] = tenant_id
    if period is not None:
        start = period_start(period)
        scope += " AND m.created_at >= :start AND m.created_at < :end"
        params["start"] = datetime(start.year, start.month, 1, tzinfo=UTC)
        params["end"] = next_period_start(period)
    token = await meter.lock()
    try:
        async with sessions() as session:
            rows = (await session.execute(text(_REBUILD.format(scope=scope)), params)).all()
            delete = "DELETE FROM usage_counts WHERE true"
            if tenant_id is not None:
                delete += " AND tenant_id = :tenant"
            if period is not None:
                delete += " AND period = :period"
                params["period"] = period_start(period)
            await session.execute(text(delete), params)
            if rows:
                await session.execute(
                    _APPLY,
                    {
                        "tenants": [r.tenant_id for r in rows],
                        "periods": [r.period for r in rows],
                        "channels": [r.channel for r in rows],
                        "ns": [r.n for r in rows],
                    },
                )
            await session.commit()
        await meter.forget_totals(
            {total_key(r.tenant_id, _period_name(r.period)) for r in rows}
            | set(await meter.totals_keys(tenant_id, period))
        )
    finally:
        await meter.unlock(token)
    return len(rows)


def _period_name(start: date) -> str:
    return f"{start.year:04d}-{start.month:02d}"
