"""Quota enforcement at intake: a notification that would take a blocking plan's channel
past its monthly quota is refused (429 `quota_exceeded`), atomically against every other
request of the tenant, in every API process.

Intake holds what a notification will cost, per channel group with a quota (its recipients,
once per channel: a push to a recipient's several devices is counted as the messages
dispatch writes, which may exceed the hold), in one Lua script per intake batch
(meter.py): used + held + asked must fit the quota, else the request is refused and nothing
is held for it. Dispatch takes the hold back as it counts the messages it writes, and gives
back what was not used (recipients skipped, unknown, opted out). Plans whose overage is
"bill" are never refused here: what goes past their quota is billed.

Audiences materialised later (a topic, everyone, a filter) are not refused at intake: their
size is known only when dispatch expands them. What happens then is the tenant's choice, or
the notification's (app/usage/overflow.py):

- `send_partial`: dispatch holds each page's messages as it writes them (`cut`), and what
  the quota cannot hold is skipped with reason `quota`: the broadcast goes out up to the
  quota.
- `refuse`: before the first page, dispatch counts the audience (at most `audience_bound`
  recipients: past the largest quota it cannot fit anyway) and holds that many messages
  per channel with a quota at once, all or nothing (`hold_audience`, the same script as
  intake's). Not held: the notification is refused, and nothing was held for it. Held: each
  page is covered by that hold first (`cut` with `held`), so that it is used up as an
  intake hold is, and only what goes beyond it (recipients who joined after the count, a
  recipient's extra push devices) is taken from what the quota has left, up to the quota;
  what the hold has left when the last page is written goes back.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from app.db import utcnow
from app.tenants import plans
from app.usage import service
from app.usage.meter import Meter, Reservation, next_period_start, period_of


class QuotaExceeded(Exception):
    """The plan's quota for `channel` has `left` messages this period, fewer than asked."""

    def __init__(self, channel: str, plan: str, resets_at: datetime, left: int) -> None:
        super().__init__(
            f"The {plan} plan's monthly {channel} quota has {left} message(s) left; it resets "
            f"at {resets_at.isoformat().replace('+00:00', 'Z')}."
        )
        self.channel = channel
        self.plan = plan
        self.resets_at = resets_at
        self.left = left


@dataclass(frozen=True)
class Ask:
    """One notification's cost, as intake knows it."""

    tenant_id: uuid.UUID
    plan: str
    notification_id: uuid.UUID
    channels: Sequence[str]
    recipients: int
    send_at: datetime | None


def reservation(ask: Ask, now: datetime, period: str | None = None) -> Reservation | None:
    """What to hold for `ask`; None when its plan blocks none of its channels. `period`:
    now's, when the caller has it already (a batch computes it once)."""
    plan = plans.plan(ask.plan)
    if plan.overage != "block":
        return None
    wants = [
        (channel, ask.recipients, quota)
        for channel in ask.channels
        if (quota := plan.quota_for(channel)) is not None
    ]
    if not wants:
        return None
    due = max(now, ask.send_at) if ask.send_at is not None else now
    return Reservation(ask.tenant_id, ask.notification_id, period or period_of(now), due, wants)


async def hold(
    session: AsyncSession, meter: Meter, asks: Sequence[Ask]
) -> list[QuotaExceeded | None]:
    """Hold each ask's cost against its tenant's quota, in order; per ask, None (held, or
    nothing to hold) or why it was refused."""
    now = utcnow()
    period = period_of(now)
    answers: list[QuotaExceeded | None] = [None] * len(asks)
    todo = [
        (i, r) for i, ask in enumerate(asks) if (r := reservation(ask, now, period)) is not None
    ]
    for _ in range(3):  # a tenant's totals unseeded: seed them, then ask again
        if not todo:
            break
        results = await meter.reserve([r for _, r in todo])
        unseeded = []
        for (i, r), refusal in zip(todo, results, strict=True):
            if refusal is None:
                continue
            if refusal.left < 0:
                unseeded.append((i, r))
                continue
            answers[i] = QuotaExceeded(
                refusal.channel, asks[i].plan, next_period_start(r.period), refusal.left
            )
        for tenant_id, period in {(r.tenant_id, r.period) for _, r in unseeded}:
            await service.seed(session, meter, tenant_id=tenant_id, period=period)
        todo = unseeded
    if todo:
        raise RuntimeError("usage totals could not be seeded")
    return answers


def audience_bound(plan: str, channels: Sequence[str]) -> int | None:
    """How many of an audience's recipients to count, at most, to know whether it fits: one
    more than the largest quota among its channels (more cannot fit whatever is left);
    None when the plan blocks none of its channels (nothing to refuse)."""
    limits = plans.plan(plan)
    if limits.overage != "block":
        return None
    quotas = [q for channel in channels if (q := limits.quota_for(channel)) is not None]
    return max(quotas) + 1 if quotas else None


async def hold_audience(
    session: AsyncSession,
    meter: Meter,
    *,
    tenant_id: uuid.UUID,
    plan: str,
    notification_id: uuid.UUID,
    channels: Sequence[str],
    recipients: int,
) -> QuotaExceeded | None:
    """Hold a broadcast's whole audience (`recipients` messages on each of its channels with
    a quota) against a blocking plan's quotas, all or nothing; why not, or None (held)."""
    # A run that held it before and died before its commit wrote no page: its hold goes, so
    # that it is not counted twice against the quota.
    await meter.release([(tenant_id, notification_id)])
    [answer] = await hold(
        session, meter, [Ask(tenant_id, plan, notification_id, channels, recipients, None)]
    )
    return answer


async def cut(
    session: AsyncSession,
    meter: Meter,
    *,
    tenant_id: uuid.UUID,
    plan: str,
    notification_id: uuid.UUID,
    queued: dict[str, int],
    held: bool = False,
) -> dict[str, int]:
    """Hold a broadcast page's queued messages against a blocking plan's quotas; per
    channel, how many the quota cannot hold (to skip). `held`: the notification's audience
    was held whole before its first page (`hold_audience`); that hold covers the page
    first."""
    now = utcnow()
    ask = Ask(tenant_id, plan, notification_id, [c for c, n in queued.items() if n], 1, None)
    wanted = reservation(ask, now)
    if wanted is None:
        return {}
    wants = [(channel, queued[channel], quota) for channel, _, quota in wanted.wants]
    page = Reservation(tenant_id, notification_id, wanted.period, now, wants)
    take = meter.take_held if held else meter.take
    granted = await take(page)
    if granted is None:
        await service.seed(session, meter, tenant_id=tenant_id, period=page.period)
        granted = await take(page)
        if granted is None:
            raise RuntimeError("usage totals could not be seeded")
    return {
        channel: n - got for (channel, n, _), got in zip(wants, granted, strict=True) if got < n
    }
