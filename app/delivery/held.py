"""Messages a tenant's kill switch holds back, on the delivery side: dropping and releasing.

A kill switch is the tenant's setting (app/tenants/delivery_controls.py); what it does to
messages already written is delivery's, here:
- `drop_noncritical` set: the channel's messages of non-critical categories still waiting
  (`queued`, `retrying`) become `skipped` (skip_reason `kill_switch`), in the caller's
  transaction. Messages being sent right now (`sending`) are past stopping; should one come
  back (a transient failure, a wait for tokens), the delivery claim skips it
  (app/delivery/claims.py).
- `pause` lifted: the channel's messages the claim left alone are due again and need deliver
  jobs. `held_pages` reads them in keyset pages of at most RELEASE_PAGE ids (by id, each
  page grouped by priority), so however many a pause held, no request loads them all.
  Messages whose retry is due later keep the deferred job that will deliver them.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

from sqlalchemy import String, bindparam, func, or_, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.delivery.outbox import BATCH_SIZE, Outbox, redeliver
from app.modes import MODES
from app.notifications.models import PRIORITIES, Message, Notification

RELEASE_PAGE = 1_000  # message ids read per query when a pause is lifted

_DROP_WAITING = text(
    """
    UPDATE messages AS m
       SET status = 'skipped', skip_reason = 'kill_switch', next_attempt_at = NULL,
           updated_at = now()
      FROM notifications AS n
     WHERE m.tenant_id = :tenant_id AND m.channel = :channel
       AND m.status IN ('queued', 'retrying')
       AND n.id = m.notification_id AND n.tenant_id = :tenant_id AND n.critical IS NOT TRUE
    """
).bindparams(bindparam("channel", type_=String))


async def drop_waiting_noncritical(
    session: AsyncSession, *, tenant_id: uuid.UUID, channel: str
) -> int:
    """Skip the channel's waiting messages of non-critical categories; how many were."""
    result = await session.execute(_DROP_WAITING, {"tenant_id": tenant_id, "channel": channel})
    return int(result.rowcount)  # type: ignore[attr-defined]


async def held_page(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    channel: str,
    mode: str,
    after: uuid.UUID | None = None,
    limit: int = RELEASE_PAGE,
) -> list[tuple[str, uuid.UUID]]:
    """(priority, id), by id past `after`, of the channel's messages of a mode that are due
    for delivery: at most `limit`.

    The walk follows the (tenant_id, mode, id) index, so a page costs what it reads from
    `after` on, and the pages of a release read the tenant's messages of the mode once.
    """
    query = (
        select(Notification.priority, Message.id)
        .join(Notification, Notification.id == Message.notification_id)
        .where(
            Message.tenant_id == tenant_id,
            Message.mode == mode,
            Notification.tenant_id == tenant_id,
            Message.channel == channel,
            Message.status.in_(("queued", "retrying")),
            or_(Message.next_attempt_at.is_(None), Message.next_attempt_at <= func.now()),
        )
        .order_by(Message.id)
        .limit(limit)
    )
    if after is not None:
        query = query.where(Message.id > after)
    return [(priority, message_id) for priority, message_id in await session.execute(query)]


async def held_pages(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    channel: str,
    size: int = BATCH_SIZE,
    page: int = RELEASE_PAGE,
) -> AsyncIterator[list[tuple[str, list[uuid.UUID]]]]:
    """Pages of (priority, ids) deliver batches of the channel's messages due for delivery:
    at most `page` ids a page, at most `size` a batch, each batch of one priority (high
    first within the page: each priority has a queue of its own, so it is the queue, not
    the order of the enqueues, that keeps high priority first).

    Each page is one query; the caller enqueues a page's batches before the next is read.
    """
    for mode in MODES:
        after: uuid.UUID | None = None
        while True:
            rows = await held_page(
                session, tenant_id=tenant_id, channel=channel, mode=mode, after=after, limit=page
            )
            by_priority: dict[str, list[uuid.UUID]] = {priority: [] for priority in PRIORITIES}
            for priority, message_id in rows:
                by_priority[priority].append(message_id)
            batches = [
                (priority, ids[start : start + size])
                for priority, ids in by_priority.items()
                for start in range(0, len(ids), size)
            ]
            if batches:
                yield batches
            if len(rows) < page:
                break
            after = rows[-1][1]


async def release(
    session: AsyncSession, outbox: Outbox, *, tenant_id: uuid.UUID, channel: str
) -> int:
    """Queue the messages a lifted pause held, a page at a time (one read, one enqueue);
    returns how many were queued. Called after the commit that lifted the pause (a deliver
    job must find the switch off, or it would hold them again). A lost enqueue: pausing and
    resuming again releases them."""
    tag = str(int(time.time() * 1000))
    released = 0
    async for page in held_pages(session, tenant_id=tenant_id, channel=channel):
        jobs = [redeliver("resume", priority, ids, tag) for priority, ids in page]
        written = await outbox.enqueue_after_commit(jobs)
        released += sum(len(job.args[0]) for job, new in zip(jobs, written, strict=True) if new)
    return released
