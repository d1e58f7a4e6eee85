"""A notification's messages counted by status, without reading its messages.

A broadcast has up to a million messages, and its GET is polled while it runs: counting
its messages by status on each poll would read them all each time. PostgreSQL keeps the
counts instead. Statement-level triggers on `messages` (migrations/versions/
0015_message_tallies.py) append to `message_tallies` one row per (notification, status) a
statement changed, with the change: +k for k messages inserted or moved into a status, -k
for those moved out of it or deleted. Every writer of messages (dispatch, claims, outcomes,
the sweeper, cancel, pause, DLQ replay, erasure, and any added later) is counted without
knowing it. Writers only append, so workers finishing batches of the same broadcast never
wait for one another on a counter row. A notification's count of a status is the sum of
its rows (`counts`).

`counts` reads one notification, which the caller has read under its tenant and mode.
"""

from __future__ import annotations

import uuid

from sqlalchemy import BigInteger, cast, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.notifications.models import MessageTally


async def counts(session: AsyncSession, *, notification_id: uuid.UUID) -> dict[str, int]:
    """The notification's messages by status; a status it has none of is left out."""
    total = cast(func.sum(MessageTally.n), BigInteger)
    rows = await session.execute(
        # ix_message_tallies_notification_id: the folded rows and the deltas since the fold.
        select(MessageTally.status, total)
        .where(MessageTally.notification_id == notification_id)
        .group_by(MessageTally.status)
        .having(total != 0)
    )
    return {status: int(n) for status, n in rows}
