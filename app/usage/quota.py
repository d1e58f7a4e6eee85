"""Quota enforcement at intake: a notification that would take a blocking plan's channel
past its monthly quota is refused (429 `quota_exceeded`), atomically against every other
request of the tenant, in every API process.

Intake holds what a notification will cost, per channel group with a quota (its recipients,
once per channel: a push to a recipient's several devices is counted as the messages
dispatch writes, which may exceed the hold), in one Lua script per intake batch
(meter.py): used + held + asked must fit the quota, else the request is refused and nothing
is held for it. Dispatch takes the hold back as it counts the messages it writes, and gives
back what was not used (recipients skipped, unknown, opted out). Plans whose overage is
"bill" are never refused here: what goes past their quota is billed. Far from a quota, an
API process hands out quota it leased instead of asking Redis per batch (`Leases`).

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

import asyncio
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import structlog
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import utcnow
from app.tenants import plans
from app.usage import service
from app.usage.meter import Meter, Reservation, next_period_start, period_of

log = structlog.get_logger(__name__)


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


# A lease is a thousandth of the channel's quota, at most LEASE_MAX messages; a quota whose
# lease would be smaller than LEASE_MIN is never leased (each batch asks Redis). A lease is
# taken only while the quota keeps LEASE_FLOOR leases' worth left after it, handed out by
# its process for LEASE_SECONDS, and lapses in Redis LEASE_GRACE_SECONDS after that.
LEASE_SHARE = 1_000
LEASE_MAX = 1_000
LEASE_MIN = 50
LEASE_FLOOR = 20
LEASE_SECONDS = 5.0
LEASE_GRACE_SECONDS = 5.0
LEASES_KEPT = 10_000  # past this many (tenant, month, channel) leases, the lapsed are dropped


@dataclass
class _Lease:
    left: int
    until: float  # the event loop's clock
    quota: int  # the quota it was taken under: another plan's asks are checked in Redis


class Leases:
    """Quota an API process hands out itself, far from a quota, so that a batch asks Redis
    nothing: a round trip in each intake batch cost intake about 14 % of its throughput.

    A lease is a hold in Redis (meter.py `lease`) like an intake hold: every process's
    check counts it as used, so that what the leases and the exact checks hand out together
    never exceeds the quota. It is taken only far from the quota (LEASE_FLOOR leases' worth
    left after it), so that near a quota every request is decided by the exact check, one
    at a time in Redis. Messages handed out from a lease use it up at dispatch without
    giving it back (their notification holds nothing of its own), so the lease keeps
    counting them as held, beside their count, until it lapses (LEASE_SECONDS +
    LEASE_GRACE_SECONDS): for those seconds a quota looks fuller than it is by at most a
    lease per process, which can only refuse early, never let through more than the quota.
    A lease is asked for in the background when missing, half used or half expired.
    """

    def __init__(self, meter: Meter) -> None:
        self._meter = meter
        self._leases: dict[tuple[uuid.UUID, str, str], _Lease] = {}
        self._asking: set[tuple[uuid.UUID, str, str]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @staticmethod
    def size(quota: int) -> int:
        return min(LEASE_MAX, quota // LEASE_SHARE)

    def cover(self, wanted: Reservation) -> bool:
        """Hand out `wanted` from this process's leases when each of its channels has
        enough left (then True); nothing is taken otherwise."""
        now = asyncio.get_running_loop().time()
        taking = []
        for channel, n, quota in wanted.wants:
            lease = self._leases.get((wanted.tenant_id, wanted.period, channel))
            if lease is None or lease.until <= now or lease.left < n or lease.quota != quota:
                return False
            taking.append((lease, n))
        for lease, n in taking:
            lease.left -= n
        return True

    def top_up(self, reservations: Sequence[Reservation]) -> None:
        """Ask for a new lease, in the background, for each leasable channel asked for
        whose lease is missing, half used or half expired."""
        now = asyncio.get_running_loop().time()
        if len(self._leases) > LEASES_KEPT:  # tenants gone quiet, months gone by
            self._leases = {k: v for k, v in self._leases.items() if v.until > now}
        wanted: dict[tuple[uuid.UUID, str], list[tuple[str, int, int, int]]] = {}
        for r in reservations:
            for channel, _, quota in r.wants:
                size = self.size(quota)
                key = (r.tenant_id, r.period, channel)
                if size < LEASE_MIN or key in self._asking:
                    continue
                lease = self._leases.get(key)
                if (
                    lease is not None
                    and lease.quota == quota
                    and lease.left * 2 >= size
                    and (lease.until - now) * 2 >= LEASE_SECONDS
                ):
                    continue
                self._asking.add(key)
                wants = wanted.setdefault((r.tenant_id, r.period), [])
                wants.append((channel, size, quota, size * LEASE_FLOOR))
        for (tenant_id, period), wants in wanted.items():
            task = asyncio.create_task(self._lease(tenant_id, period, wants))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _lease(
        self, tenant_id: uuid.UUID, period: str, wants: list[tuple[str, int, int, int]]
    ) -> None:
        expires_ms = int((time.time() + LEASE_SECONDS + LEASE_GRACE_SECONDS) * 1000)
        try:
            granted = await self._meter.lease(tenant_id, period, expires_ms, wants)
            until = asyncio.get_running_loop().time() + LEASE_SECONDS
            for (channel, _, quota, _), n in zip(wants, granted or [], strict=False):
                key = (tenant_id, period, channel)
                if n > 0:
                    # What the lease it replaces had left lapses with it in Redis.
                    self._leases[key] = _Lease(n, until, quota)
                else:  # near the quota: no lease, every request is checked in Redis
                    self._leases.pop(key, None)
        except RedisError:
            log.warning("quota lease not taken: Redis unreachable", tenant_id=str(tenant_id))
        finally:
            self._asking.difference_update((tenant_id, period, w[0]) for w in wants)


async def hold(
    session: AsyncSession, meter: Meter, asks: Sequence[Ask], leases: Leases | None = None
) -> list[QuotaExceeded | None]:
    """Hold each ask's cost against its tenant's quota, in order; per ask, None (held, or
    nothing to hold) or why it was refused. With `leases`, what this process's leases cover
    is handed out from them, and only the rest is asked of Redis."""
    now = utcnow()
    period = period_of(now)
    answers: list[QuotaExceeded | None] = [None] * len(asks)
    todo = [
        (i, r) for i, ask in enumerate(asks) if (r := reservation(ask, now, period)) is not None
    ]
    wanted = [r for _, r in todo]
    if leases is not None:
        todo = [(i, r) for i, r in todo if not leases.cover(r)]
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
    if leases is not None:  # after the checks: a tenant's totals are seeded by now
        leases.top_up(wanted)
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
