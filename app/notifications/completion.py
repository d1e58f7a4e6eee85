"""notification.completed: a dispatched notification with no message left to send.

A notification is complete once it is dispatched (every message written; a broadcast's last
page) and none of its messages is queued, sending or retrying: every one is sent, failed,
skipped or cancelled (receipts may still move sent ones on). Writers of outcomes cannot tell
they wrote the last one (two workers finishing a broadcast's last batches each see the
other's still sending), so completion is found afterwards: each round reads a page of
dispatched notifications not yet complete (ix_notifications_completing) and their pending
counts from the tallies (app/notifications/tallies.py), and marks the ones with none
pending complete with their event, in one transaction. Rounds walk the candidates in id
order from where the last one stopped, and wrap around, so that long-running broadcasts at
the front never hold the others' events back.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import BigInteger, cast, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.notifications.models import MessageTally, Notification
from app.webhooks.events import Event, record

PENDING = ("queued", "sending", "retrying")
PAGE = 500


@dataclass(frozen=True)
class Round:
    completed: int
    last_id: uuid.UUID | None  # the next round starts after it; None: start again


async def complete(
    session: AsyncSession, now: datetime, *, after: uuid.UUID | None = None, limit: int = PAGE
) -> Round:
    """One round over up to `limit` candidates after `after`. The caller commits."""
    query = (
        select(Notification.id, Notification.tenant_id, Notification.mode)
        .where(Notification.status == "dispatched", Notification.completed_at.is_(None))
        .order_by(Notification.id)
        .limit(limit)
        # Dispatch, cancel and pause hold the row while they change it: not now, then.
        .with_for_update(key_share=True, skip_locked=True)
    )
    if after is not None:
        query = query.where(Notification.id > after)
    candidates = (await session.execute(query)).all()
    if not candidates:
        return Round(0, None)
    ids = [row.id for row in candidates]
    total = cast(func.sum(MessageTally.n), BigInteger)
    counts: dict[uuid.UUID, dict[str, int]] = {}
    for notification_id, status, n in await session.execute(
        select(MessageTally.notification_id, MessageTally.status, total)
        .where(MessageTally.notification_id.in_(ids))
        .group_by(MessageTally.notification_id, MessageTally.status)
        .having(total != 0)
    ):
        counts.setdefault(notification_id, {})[status] = int(n)
    done = [row for row in candidates if not any(s in PENDING for s in counts.get(row.id, {}))]
    if done:
        await session.execute(
            update(Notification)
            .where(Notification.id.in_([row.id for row in done]))
            .values(completed_at=now)
        )
        await record(
            session,
            [
                Event(
                    tenant_id=row.tenant_id,
                    mode=row.mode,
                    type="notification.completed",
                    ordering_key=str(row.id),
                    data={"notification_id": str(row.id), "messages": counts.get(row.id, {})},
                )
                for row in done
            ],
            now,
        )
    last = candidates[-1].id if len(candidates) == limit else None
    return Round(len(done), last)
