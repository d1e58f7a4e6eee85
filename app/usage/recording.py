"""Counting what dispatch wrote, once its transaction committed.

Dispatch notes the messages it writes `queued` on the session (`note`); the caller, after
its commit, hands them to Redis in one script call (`record_committed`). Counting after the
commit means a rolled-back write (a dispatch that fails and is retried) is never counted;
a process that dies between the commit and the count loses that count from Redis only, and
`herald usage rebuild` recovers it from `messages`. Test mode is never counted.
"""

from __future__ import annotations

import uuid
from collections import Counter as Tally
from collections.abc import Mapping
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.db import utcnow
from app.usage.meter import Count, Meter, period_of

_COUNTS = "herald.usage.counts"
_RELEASES = "herald.usage.releases"


def note(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    mode: str,
    notification_id: uuid.UUID,
    queued: Mapping[str, int],
    held: bool,
) -> None:
    """Note the messages written `queued`, per channel, to count after the commit; `held`:
    they use up the notification's intake hold."""
    if mode != "live":
        return
    tally: Tally[tuple[uuid.UUID, uuid.UUID | None, str]] = session.info.setdefault(
        _COUNTS, Tally()
    )
    for channel, n in queued.items():
        tally[(tenant_id, notification_id if held else None, channel)] += n


def note_done(session: AsyncSession, *, tenant_id: uuid.UUID, notification_id: uuid.UUID) -> None:
    """The notification wrote all its messages: what its intake hold has left goes back."""
    session.info.setdefault(_RELEASES, set()).add((tenant_id, notification_id))


async def record_committed(session: AsyncSession, meter: Meter | None) -> None:
    """Count what was noted on `session` (its transaction has committed), then forget it."""
    tally: Tally[tuple[uuid.UUID, uuid.UUID | None, str]] = session.info.pop(_COUNTS, Tally())
    releases: set[tuple[uuid.UUID, uuid.UUID]] = session.info.pop(_RELEASES, set())
    if meter is None:
        return
    period = period_of(utcnow())
    await meter.record(
        Count(tenant_id, period, channel, n, held_for)
        for (tenant_id, held_for, channel), n in tally.items()
    )
    await meter.release(releases)


def forget(session: AsyncSession) -> None:
    """Drop what was noted: the transaction rolled back."""
    session.info.pop(_COUNTS, None)
    session.info.pop(_RELEASES, None)


def pending(session: AsyncSession) -> dict[Any, int]:
    return dict(session.info.get(_COUNTS, {}))
