"""The outbox relay's query: accepted notifications whose dispatch job should have run by now.

PostgreSQL is the truth; the Redis queue can be rebuilt from it. The API commits a
notification and then enqueues its dispatch job, and that enqueue can be lost (Redis down
or flushed, the process killed in between). A notification still `accepted` a while after
it was due has lost its job, or waits behind a backlog: the relay cron (jobs/cron.py)
enqueues it again under the same job id, which arq refuses while the first is still there.
A notification whose dispatch was deferred for its tenant's render budget has a deferred job
of its own and is due again at `dispatch_after`, not before. One whose dispatch keeps failing
is failed after a few runs (failures.py), so the relay does not dispatch it for ever.
This is an operator job: it reads every tenant's rows.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession


@dataclass(frozen=True)
class PendingDispatch:
    id: uuid.UUID
    priority: str
    send_at: datetime | None


# Due at coalesce(send_at, created_at), but never counted as lost sooner than `older_than`
# after its own enqueue (at created_at), even when send_at was already past on arrival.
# Written as two range conditions so that `created_at < …` is an Index Cond on
# ix_notifications_pending (created_at WHERE status = 'accepted') and rows come out in index
# order, oldest first, stopping at the limit; coalesce(send_at, created_at) < … would be a
# filter over every accepted row plus a sort. The status is a literal, not a parameter, so
# that PostgreSQL can match the partial index's predicate in a generic (cached) plan too.
# The second branch: an audience's notification dispatched with held messages left to
# release, or cancelled (or failed) with held messages left to cancel (expansion.py),
# whose run has not been seen for a while (each run keeps dispatch_after ahead of the time
# while it runs).
_STALE = text(
    """
    (SELECT id, priority, send_at
       FROM notifications
      WHERE status = 'accepted'
        AND created_at < now() - CAST(:older_than AS interval)
        AND (send_at IS NULL OR send_at < now() - CAST(:older_than AS interval))
        AND (dispatch_after IS NULL OR dispatch_after < now() - CAST(:older_than AS interval))
      ORDER BY created_at
      LIMIT :limit)
    UNION ALL
    (SELECT id, priority, NULL
       FROM notifications
      WHERE releasing
        AND dispatch_after < now() - CAST(:older_than AS interval)
        AND status IN ('dispatched', 'cancelled', 'failed')
      ORDER BY dispatch_after
      LIMIT :limit)
    """
)


async def stale_accepted(
    session: AsyncSession, *, older_than: timedelta, limit: int
) -> list[PendingDispatch]:
    """Accepted notifications of any tenant due more than `older_than` ago, oldest first,
    and audiences' whose release stopped as long ago."""
    rows = await session.execute(_STALE, {"older_than": older_than, "limit": limit})
    return [PendingDispatch(row.id, row.priority, row.send_at) for row in rows]
