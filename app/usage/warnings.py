"""Quota warnings: a tenant's owners are told when its use of a channel group this month
reaches 80 % and then 100 % of its plan's quota, by e-mail and on the dashboard.

Nothing here is on the send path. After each usage flush (jobs/cron.py `flush_usage`),
`check` looks at the (tenant, period, channel) counts that flush changed, and only at those:

- Detection is one statement: usage_counts joined with the tenants' current plans' quotas
  (the operator's plans file, handed to PostgreSQL as arrays) records every threshold
  reached in usage_warnings, whose key (tenant, period, channel, threshold) lets each be
  recorded once, however many flushes run at the same time. A plan change re-arms a
  threshold: a row judged against another quota is taken again when the current quota is
  reached (a tenant that went down from a billing plan to a blocking one after its 100 %
  mail is told that sends are now refused). Groups the plan gives no quota never warn,
  and test mode never counts, so it never warns either.
- Mail, after that commit: each (tenant, period, channel) with warnings not mailed yet gets
  one mail through Herald's system mailer (app/auth/mailer.py), naming its highest threshold
  (80 % and 100 % found by one check make one mail, about 100 %), to every owner of the
  tenant with a verified address. The rows are locked (FOR UPDATE SKIP LOCKED) while it is
  sent and `mailed_at` set in the same transaction, so two runs never send it both. A send
  that failed leaves `mailed_at` NULL and the next run tries again; a tenant with no
  verified owner yet is mailed once one verifies. That is at-least-once: a crash after the
  server took the mail and before the commit sends it again on the next run.
- Only the current month is warned about: a count flushed just after the month ended
  concerns a quota that has already reset.

The dashboard's banner (`alerts`) is not read from usage_warnings: it is computed on each
page from usage_counts and the tenant's current plan, so an upgrade that takes the share
below 80 % removes it at once, and it never disagrees with the quota now in force.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.mailer import SystemMailer
from app.channels import CHANNELS
from app.db import utcnow
from app.tenants import plans
from app.usage.meter import next_period_start, period_of, period_start
from app.usage.service import Touched

log = structlog.get_logger(__name__)

THRESHOLDS = (80, 100)  # per cent of a quota
MAIL_LIMIT = 50  # (tenant, channel) mails a run sends at most; the rest wait for the next
MAIL_SECONDS = 30.0  # no new mail begun past this: the cron job's timeout is 60 s
CHANNEL_NAMES = {
    "email": "e-mail",
    "sms": "SMS",
    "push": "push",
    "webhook": "webhook",
    "inbox": "in-app inbox",
}


@dataclass(frozen=True)
class QuotaAlert:
    """A channel group at or past a threshold of its quota this month (the banner's line)."""

    channel: str
    threshold: int  # 80 | 100
    used: int
    quota: int
    overage: str  # block | bill
    resets_at: datetime

    @property
    def channel_name(self) -> str:
        return CHANNEL_NAMES.get(self.channel, self.channel)


@dataclass(frozen=True)
class Checked:
    """What one check did: thresholds newly recorded, mails sent, mails that failed."""

    recorded: int
    mailed: int
    failed: int


def reached(used: int, quota: int) -> int | None:
    """The highest threshold `used` reached of `quota`, if any (nothing used: none)."""
    if used <= 0:
        return None
    found = [t for t in THRESHOLDS if used * 100 >= quota * t]
    return found[-1] if found else None


async def alerts(
    session: AsyncSession, *, tenant_id: uuid.UUID, plan: str, now: datetime | None = None
) -> list[QuotaAlert]:
    """The tenant's channel groups at 80 % or more of the current plan's quota this month,
    from the counts flushed to PostgreSQL (at most a flush interval behind)."""
    period = period_of(now or utcnow())
    rows = await session.execute(
        text("SELECT channel, count FROM usage_counts WHERE tenant_id = :tenant AND period = :p"),
        {"tenant": tenant_id, "p": period_start(period)},
    )
    counts = {channel: int(count) for channel, count in rows.all()}
    chosen = plans.plan(plan)
    found = []
    for channel in CHANNELS:
        quota = chosen.quota_for(channel)
        used = counts.get(channel, 0)
        threshold = None if quota is None else reached(used, quota)
        if quota is not None and threshold is not None:
            found.append(
                QuotaAlert(
                    channel, threshold, used, quota, chosen.overage, next_period_start(period)
                )
            )
    return found


_RECORD = text(
    """
    INSERT INTO usage_warnings AS w (tenant_id, period, channel, threshold, used, quota)
    SELECT u.tenant_id, u.period, u.channel, th.threshold, u.count, q.quota
      FROM unnest(CAST(:tenants AS uuid[]), CAST(:channels AS text[])) AS k(tenant_id, channel)
      JOIN usage_counts AS u
        ON u.tenant_id = k.tenant_id AND u.period = :period AND u.channel = k.channel
      JOIN tenants AS t ON t.id = u.tenant_id
      -- A plan the file lacks gets the fallback's quotas, as everywhere (plans.py).
      JOIN unnest(CAST(:q_plans AS text[]), CAST(:q_channels AS text[]),
                  CAST(:q_quotas AS bigint[])) AS q(plan, channel, quota)
        ON q.plan = CASE WHEN t.plan = ANY(CAST(:known AS text[])) THEN t.plan
                         ELSE :fallback END
       AND q.channel = u.channel
     CROSS JOIN unnest(CAST(:thresholds AS int[])) AS th(threshold)
     WHERE u.count > 0 AND u.count * 100 >= q.quota * th.threshold
    ON CONFLICT (tenant_id, period, channel, threshold) DO UPDATE
       SET used = EXCLUDED.used, quota = EXCLUDED.quota, created_at = now(), mailed_at = NULL
     WHERE w.quota <> EXCLUDED.quota
    RETURNING w.tenant_id
    """
)


async def record(
    session: AsyncSession, touched: Iterable[tuple[uuid.UUID, str, str]], *, period: str
) -> int:
    """Record the thresholds the touched keys of `period` reached, each once (per quota);
    how many were new. The caller commits."""
    keys = sorted({(t, c) for t, p, c in touched if p == period})
    if not keys:
        return 0
    catalogue = plans.catalogue()
    quotas = [
        (name, channel, quota)
        for name, plan in catalogue.plans.items()
        for channel in CHANNELS
        if (quota := plan.quota_for(channel)) is not None
    ]
    if not quotas:
        return 0
    rows = await session.execute(
        _RECORD,
        {
            "tenants": [t for t, _ in keys],
            "channels": [c for _, c in keys],
            "period": period_start(period),
            "q_plans": [q[0] for q in quotas],
            "q_channels": [q[1] for q in quotas],
            "q_quotas": [q[2] for q in quotas],
            "known": list(catalogue.plans),
            "fallback": plans.FALLBACK_PLAN,
            "thresholds": list(THRESHOLDS),
        },
    )
    return len(rows.all())


_UNMAILED = text(
    """
    SELECT w.tenant_id, w.channel
      FROM usage_warnings AS w
     WHERE w.period = :period AND w.mailed_at IS NULL
       AND EXISTS (SELECT 1 FROM memberships AS m JOIN users AS u ON u.id = m.user_id
                    WHERE m.tenant_id = w.tenant_id AND m.role = 'owner'
                      AND u.email_verified_at IS NOT NULL)
     GROUP BY w.tenant_id, w.channel
     ORDER BY min(w.created_at)
     LIMIT :limit
    """
)

_OWNERS = text(
    """
    SELECT m.tenant_id, u.email
      FROM memberships AS m JOIN users AS u ON u.id = m.user_id
     WHERE m.tenant_id = ANY(CAST(:tenants AS uuid[])) AND m.role = 'owner'
       AND u.email_verified_at IS NOT NULL
     ORDER BY lower(u.email)
    """
)

_TAKE = text(
    """
    SELECT w.threshold, w.used, w.quota, t.name, t.plan
      FROM usage_warnings AS w JOIN tenants AS t ON t.id = w.tenant_id
     WHERE w.tenant_id = :tenant AND w.period = :period AND w.channel = :channel
       AND w.mailed_at IS NULL
     ORDER BY w.threshold DESC
       FOR UPDATE OF w SKIP LOCKED
    """
)

_MAILED = text(
    """
    UPDATE usage_warnings SET mailed_at = now()
     WHERE tenant_id = :tenant AND period = :period AND channel = :channel
       AND threshold = ANY(CAST(:thresholds AS int[]))
    """
)


async def mail_owners(
    sessions: Callable[[], AsyncSession],
    mailer: SystemMailer,
    *,
    period: str,
    public_url: str,
    limit: int = MAIL_LIMIT,
) -> tuple[int, int]:
    """Mail the owners of every tenant with warnings of `period` not mailed yet, one mail
    per (tenant, channel) about its highest threshold; (sent, failed)."""
    start = period_start(period)
    async with sessions() as session:
        waiting = (await session.execute(_UNMAILED, {"period": start, "limit": limit})).all()
        if not waiting:
            return 0, 0
        owners: dict[uuid.UUID, list[str]] = {}
        tenants = sorted({row.tenant_id for row in waiting})
        for tenant_id, email in (await session.execute(_OWNERS, {"tenants": tenants})).all():
            owners.setdefault(tenant_id, []).append(email)
    sent = failed = 0
    deadline = time.monotonic() + MAIL_SECONDS
    for tenant_id, channel in waiting:
        if time.monotonic() > deadline:
            break  # the rest wait for the next run
        if not owners.get(tenant_id):
            continue  # an owner's verification since the search: the next run
        key = {"tenant": tenant_id, "period": start, "channel": channel}
        async with sessions() as session:
            taken = (await session.execute(_TAKE, key)).all()
            if not taken:  # mailed meanwhile, or being mailed by another run
                continue
            top = taken[0]
            subject, body = warning_mail(
                tenant_name=top.name,
                plan_name=top.plan,
                channel=channel,
                threshold=top.threshold,
                used=top.used,
                quota=top.quota,
                resets_at=next_period_start(period),
                public_url=public_url,
            )
            # One message to all of them: they are the tenant's owners, who see each other
            # on the members page, and one send makes the row's mailed_at true for all.
            try:
                delivered = await mailer.send(
                    to=", ".join(owners[tenant_id]), subject=subject, text=body
                )
            except Exception:
                # One tenant's mail that cannot even be written must not stop the others'.
                log.exception("quota warning not mailed", tenant_id=str(tenant_id))
                delivered = False
            if delivered:
                await session.execute(_MAILED, {**key, "thresholds": [r.threshold for r in taken]})
                await session.commit()
                sent += 1
            else:
                await session.rollback()
                failed += 1
    return sent, failed


async def check(
    sessions: Callable[[], AsyncSession],
    mailer: SystemMailer,
    touched: Touched,
    *,
    public_url: str,
    now: datetime | None = None,
) -> Checked:
    """After a flush: record the thresholds its keys reached, then mail what is unmailed
    (this run's warnings and those an earlier run failed to send)."""
    period = period_of(now or utcnow())
    async with sessions() as session:
        recorded = await record(session, touched, period=period)
        await session.commit()
    sent, failed = await mail_owners(sessions, mailer, period=period, public_url=public_url)
    if recorded or sent or failed:
        log.info("quota warnings", recorded=recorded, mailed=sent, failed=failed)
    return Checked(recorded, sent, failed)


def warning_mail(
    *,
    tenant_name: str,
    plan_name: str,
    channel: str,
    threshold: int,
    used: int,
    quota: int,
    resets_at: datetime,
    public_url: str,
) -> tuple[str, str]:
    """Subject and text of a quota warning, in the terms of the tenant's current plan."""
    plan = plans.plan(plan_name)
    name = CHANNEL_NAMES.get(channel, channel)
    resets = f"{resets_at.day} {resets_at:%B %Y}, 00:00 UTC"
    if threshold >= 100:
        subject = f"{tenant_name} has used all of its {name} quota this month"
        if plan.overage == "bill":
            then = (
                f"Further {name} messages are sent and billed as overage, at "
                f"{plan.price_per_1000} per 1,000, until the quota resets on {resets}."
            )
        else:
            then = (
                f"Further {name} messages are refused (HTTP 429, quota_exceeded) until the "
                f"quota resets on {resets}."
            )
    else:
        subject = f"{tenant_name} has used {threshold} % of its {name} quota this month"
        if plan.overage == "bill":
            then = (
                f"Past the quota, {name} messages are billed as overage, at "
                f"{plan.price_per_1000} per 1,000. The quota resets on {resets}."
            )
        else:
            then = (
                f"Past the quota, {name} messages are refused (HTTP 429, quota_exceeded) "
                f"until it resets on {resets}."
            )
    body = (
        "Hello,\n\n"
        f"{tenant_name} has sent {used:,} of the {quota:,} {name} messages its {plan_name} plan "
        f"includes this month ({threshold} %).\n\n"
        f"{then}\n\n"
        f"To change the plan: {public_url}/billing\n\n"
        f"You receive this as an owner of {tenant_name} on Herald.\n"
    )
    return subject, body
