"""The overview of a tenant's sending: today and the last 30 days, from the rollups.

One read of two bounded ranges of the tenant's rollup rows of one mode
(ix_message_rollups_tenant_id_mode_day): the window's days and the states, a few thousand
rows at most however many messages the tenant has (app/analytics/rollups.py says what they
count).
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, timedelta

from sqlalchemy import BigInteger, cast, func, select, union_all
from sqlalchemy.ext.asyncio import AsyncSession

from app.analytics.models import MessageRollup
from app.analytics.rollups import PRIORITY_RANKS, percentile
from app.channels import CHANNELS
from app.notifications.models import PRIORITIES

WINDOW_DAYS = 30
COUNTED = ("accepted", "sent", "delivered", "failed", "dead_lettered")


@dataclass
class Totals:
    """Messages counted over a span of days (one channel, or all)."""

    accepted: int = 0
    sent: int = 0
    delivered: int = 0
    failed: int = 0
    dead_lettered: int = 0
    # Accept→sent latency: bucket → messages (app/analytics/rollups.py).
    latency: dict[int, int] = field(default_factory=dict)

    def add(self, measure: str, bucket: int, n: int) -> None:
        if measure == "latency":
            self.latency[bucket] = self.latency.get(bucket, 0) + n
        elif measure in COUNTED:
            setattr(self, measure, getattr(self, measure) + n)

    @property
    def delivery_rate(self) -> float | None:
        """The share of the messages the send path finished (sent, or dead-lettered) that
        did not fail (dead-lettered, bounced, undelivered); None before any finished. Not
        `delivered` over sent: many providers (the sandbox among them) report no delivery."""
        finished = self.sent + self.dead_lettered
        if not finished:
            return None
        return min(max((finished - self.failed) / finished, 0.0), 1.0)

    @property
    def p50_ms(self) -> float | None:
        return percentile(self.latency, 0.50)

    @property
    def p95_ms(self) -> float | None:
        return percentile(self.latency, 0.95)


@dataclass(frozen=True)
class Day:
    day: date
    totals: Totals


@dataclass(frozen=True)
class Overview:
    """A tenant's figures in one mode, as of `today` (UTC)."""

    today: date
    first_day: date  # of the window
    today_totals: Totals
    window_totals: Totals
    today_by_channel: dict[str, Totals]
    window_by_channel: dict[str, Totals]
    days: list[Day]  # every day of the window, oldest first, empty ones included
    pending: dict[str, int]  # priority → messages queued, sending or retrying now
    pending_by_channel: dict[str, int]
    in_dlq: int  # messages in the DLQ now
    in_dlq_by_channel: dict[str, int]

    ever: bool  # whether any message of this mode was ever counted, in the window or before

    @property
    def empty(self) -> bool:
        """No message was ever written in this mode."""
        return not self.ever

    @property
    def channels(self) -> list[str]:
        """The channels with any figure, in the order channels are listed everywhere."""
        used = set(self.window_by_channel) | {c for c, n in self.pending_by_channel.items() if n}
        used |= {c for c, n in self.in_dlq_by_channel.items() if n}
        return [c for c in CHANNELS if c in used] + sorted(used - set(CHANNELS))


async def overview(
    session: AsyncSession, *, tenant_id: uuid.UUID, mode: str, today: date
) -> Overview:
    """The tenant's figures in `mode`: today, the WINDOW_DAYS days up to today, and now."""
    first = today - timedelta(days=WINDOW_DAYS - 1)
    total = cast(func.sum(MessageRollup.n), BigInteger)
    columns = (
        MessageRollup.day,
        MessageRollup.channel,
        MessageRollup.measure,
        MessageRollup.bucket,
    )
    scoped = select(*columns, total).where(
        MessageRollup.tenant_id == tenant_id, MessageRollup.mode == mode
    )
    # Two ranges of ix_message_rollups_tenant_id_mode_day, each bounded: the window's days,
    # and the states (day NULL). One OR of both would read every day the tenant ever had.
    query = union_all(
        scoped.where(MessageRollup.day >= first, MessageRollup.day <= today).group_by(*columns),
        scoped.where(MessageRollup.day.is_(None)).group_by(*columns),
    )
    rows = (await session.execute(query)).all()
    ever = bool(rows) or (
        await session.scalar(
            select(MessageRollup.id)
            .where(MessageRollup.tenant_id == tenant_id, MessageRollup.mode == mode)
            .limit(1)
        )
        is not None
    )
    by_day: dict[date, Totals] = defaultdict(Totals)
    window, today_totals = Totals(), Totals()
    window_by_channel: dict[str, Totals] = defaultdict(Totals)
    today_by_channel: dict[str, Totals] = defaultdict(Totals)
    ranks = {rank: priority for priority, rank in PRIORITY_RANKS.items()}
    pending = dict.fromkeys(PRIORITIES, 0)
    pending_by_channel: dict[str, int] = defaultdict(int)
    in_dlq_by_channel: dict[str, int] = defaultdict(int)
    for day, channel, measure, bucket, n in rows:
        n = int(n)
        if day is None:
            if measure == "pending":
                pending[ranks.get(bucket, "normal")] += n
                pending_by_channel[channel] += n
            elif measure == "in_dlq":
                in_dlq_by_channel[channel] += n
            continue
        by_day[day].add(measure, bucket, n)
        window.add(measure, bucket, n)
        window_by_channel[channel].add(measure, bucket, n)
        if day == today:
            today_totals.add(measure, bucket, n)
            today_by_channel[channel].add(measure, bucket, n)
    return Overview(
        today=today,
        first_day=first,
        today_totals=today_totals,
        window_totals=window,
        today_by_channel=dict(today_by_channel),
        window_by_channel=dict(window_by_channel),
        days=[
            Day(first + timedelta(days=i), by_day.get(first + timedelta(days=i), Totals()))
            for i in range(WINDOW_DAYS)
        ],
        pending={priority: max(n, 0) for priority, n in pending.items()},
        pending_by_channel={c: n for c, n in pending_by_channel.items() if n > 0},
        in_dlq=max(sum(in_dlq_by_channel.values()), 0),
        in_dlq_by_channel={c: n for c, n in in_dlq_by_channel.items() if n > 0},
        ever=ever,
    )
