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

Appending grows the rows a read sums: compaction (`compact`, run by the tally cron) folds
each notification's rows into one per status, oldest deltas first, in bounded rounds. It
is exact while writers go on, because it inserts the sum of exactly the rows its DELETE
removed: a delta committed after its statement began is neither deleted nor summed, and a
reader sees the rows before or after the fold's commit, never a mix. It holds each
notification's row (FOR NO KEY UPDATE, SKIP LOCKED) while folding, so that two folds never
sum the same rows, and a notification being deleted (whose trigger deletes its tallies) is
left alone rather than given folded rows after its tallies were deleted. Row locks of the
notification taken by dispatch, cancel or pause make the fold skip it until its next tick;
the messages' writers take no lock of the notification for their tallies.

These are operator statements for compaction (every tenant's rows); `counts` reads one
notification, which the caller has read under its tenant and mode. The caller commits.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import BigInteger, cast, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.notifications.models import MessageTally

COMPACT_LIMIT = 5_000  # delta rows looked at per round


@dataclass(frozen=True)
class Compacted:
    last_id: int | None  # the newest delta looked at: the next round starts after it
    seen: int  # delta rows looked at
    notifications: int  # notifications folded
    removed: int  # rows deleted (deltas and earlier sums)
    written: int  # folded rows written in their place


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


async def counts_of(
    session: AsyncSession, *, notification_ids: list[uuid.UUID]
) -> dict[uuid.UUID, dict[str, int]]:
    """`counts` of each of a page of notifications (which the caller read under its tenant
    and mode), in one statement; a notification without messages is left out."""
    if not notification_ids:
        return {}
    total = cast(func.sum(MessageTally.n), BigInteger)
    rows = await session.execute(
        select(MessageTally.notification_id, MessageTally.status, total)
        .where(MessageTally.notification_id.in_(notification_ids))
        .group_by(MessageTally.notification_id, MessageTally.status)
        .having(total != 0)
    )
    found: dict[uuid.UUID, dict[str, int]] = {}
    for notification_id, status, n in rows:
        found.setdefault(notification_id, {})[status] = int(n)
    return found


# The notifications of the `limit` oldest deltas after `after` (ix_message_tallies_deltas),
# those whose row is free, and all their rows, each notification's folded into one per
# status. A status that nets to zero (queued, once all are sent) keeps no row. Their rows
# are found through an array of their ids: joined with `held`, whose size the planner
# cannot know and takes for `limit`, they were read by a hash join over the whole table.
_COMPACT = text(
    """
    WITH oldest AS (
        SELECT id, notification_id
          FROM message_tallies
         WHERE NOT folded AND id > :after
         ORDER BY id
         LIMIT :limit
    ), held AS (
        SELECT n.id
          FROM notifications AS n
         WHERE n.id IN (SELECT notification_id FROM oldest)
           FOR NO KEY UPDATE SKIP LOCKED
    ), gone AS (
        DELETE FROM message_tallies AS t
         WHERE t.notification_id = ANY(ARRAY(SELECT id FROM held))
        RETURNING t.notification_id, t.status, t.n
    ), written AS (
        INSERT INTO message_tallies (notification_id, status, n, folded)
        SELECT notification_id, status, CAST(sum(n) AS bigint), true
          FROM gone
         GROUP BY notification_id, status
        HAVING sum(n) <> 0
        RETURNING 1
    )
    SELECT (SELECT max(id) FROM oldest) AS last_id,
           (SELECT count(*) FROM oldest) AS seen,
           (SELECT count(*) FROM held) AS notifications,
           (SELECT count(*) FROM gone) AS removed,
           (SELECT count(*) FROM written) AS written
    """
)


async def compact(
    session: AsyncSession, *, after: int = 0, limit: int = COMPACT_LIMIT
) -> Compacted:
    """Fold the notifications of the `limit` oldest deltas past id `after`."""
    row = (await session.execute(_COMPACT, {"after": after, "limit": limit})).one()
    return Compacted(row.last_id, row.seen, row.notifications, row.removed, row.written)
