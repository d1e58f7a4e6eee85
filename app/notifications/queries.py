"""Reading notifications and messages; cancelling, pausing and resuming what is not sent yet.

Every function takes the tenant and the mode: a test key sees test notifications only.
Cancel, pause and resume take the acting member's role (None for an API key) and refuse one
that may not (app/auth/roles.py), and audit the change when an actor is given (a member's).

A paused notification is not dispatched, and its messages waiting to be sent (`queued`,
`retrying`) are due at 'infinity': no claim takes them (the claim also skips a paused
notification's messages outright, for one that comes back from a send under way), and the
sweeper, which looks for messages overdue, never finds them. Resuming makes them due now
(and a retry that fell due meanwhile) and hands back their deliver jobs, in pages, or the
dispatch job of one not dispatched yet.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import ColumnElement, func, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from app.audit import service as audit
from app.auth import roles
from app.db import utcnow
from app.delivery import outbox
from app.notifications import expansion, tallies
from app.notifications.models import Attempt, Message, Notification
from app.pagination import Page, in_index_order
from app.recipients.models import Recipient

MESSAGES_SHOWN = 100
RESUME_PAGE = 1_000  # messages made due again per statement when a notification resumes
LIST_SCAN = 10_000  # notifications a filtered list looks at per page, at most


@dataclass(frozen=True)
class MessageView:
    message: Message
    recipient: str


@dataclass(frozen=True)
class NotificationView:
    notification: Notification
    counts: dict[str, int]
    messages: list[MessageView]
    has_more_messages: bool


@dataclass(frozen=True)
class MessageFilters:
    status: str | None = None
    channel: str | None = None
    recipient: str | None = None
    notification_id: uuid.UUID | None = None
    since: datetime | None = None
    until: datetime | None = None
    error_class: str | None = None
    provider: str | None = None


@dataclass(frozen=True)
class NotificationFilters:
    status: str | None = None
    template: str | None = None
    since: datetime | None = None
    until: datetime | None = None


@dataclass(frozen=True)
class NotificationPage:
    page: Page[Notification]
    # The filters matched too few of the SCAN notifications looked at to fill the page: the
    # next search starts after this id (the page's cursor), else None.
    searched_to: uuid.UUID | None


async def list_notifications(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    mode: str,
    filters: NotificationFilters,
    limit: int,
    cursor: uuid.UUID | None,
    scan: int = LIST_SCAN,
) -> NotificationPage:
    """The tenant's notifications of `mode`, newest first, a page of at most `limit`.

    An ordered walk of ix_notifications_tenant_id_mode_id (ids are time-ordered) from the
    cursor, stopped at `limit` + 1 rows; with filters, which no index serves, at most `scan`
    notifications are looked at, so that a rare status costs no more than a common one:
    a page the scan could not fill says where it stopped (`searched_to`).
    """
    tenant = [Notification.tenant_id == tenant_id, Notification.mode == mode]
    if cursor is not None:
        tenant.append(Notification.id < cursor)
    newest = select(Notification).where(*tenant).order_by(Notification.id.desc())
    window = aliased(Notification, newest.limit(scan).subquery("window"))
    matching: list[ColumnElement[bool]] = []
    if filters.status:
        matching.append(window.status == filters.status)
    if filters.template:
        matching.append(window.template_key == filters.template)
    if filters.since:
        matching.append(window.created_at >= in_utc(filters.since))
    if filters.until:
        matching.append(window.created_at < in_utc(filters.until))
    # Without statistics the planner takes any index on (tenant_id, mode) and sorts every
    # notification of the tenant; with no sort allowed, only the ordered walk is left.
    async with in_index_order(session):
        filtered = select(window).where(*matching).order_by(window.id.desc())
        query = filtered if matching else newest
        rows = list((await session.scalars(query.limit(limit + 1))).all())
        searched_to = None
        if matching and len(rows) <= limit:
            searched_to = await session.scalar(
                select(Notification.id)
                .where(*tenant)
                .order_by(Notification.id.desc())
                .offset(scan - 1)
                .limit(1)
            )
    has_more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = str(rows[-1].id) if has_more and rows else None
    return NotificationPage(Page(rows, has_more, next_cursor), searched_to)


def message_conditions(
    tenant_id: uuid.UUID, mode: str, filters: MessageFilters
) -> list[ColumnElement[bool]]:
    """WHERE clauses of the tenant's messages of `mode` matching `filters`.

    A `recipient` filter names recipients.external_id: the query must join recipients.
    """
    conditions: list[ColumnElement[bool]] = [Message.tenant_id == tenant_id, Message.mode == mode]
    equal_to = {
        Message.status: filters.status,
        Message.channel: filters.channel,
        Recipient.external_id: filters.recipient,
        Message.notification_id: filters.notification_id,
        Message.error_class: filters.error_class,
        Message.provider: filters.provider,
    }
    conditions += [column == value for column, value in equal_to.items() if value]
    if filters.since:
        conditions.append(Message.created_at >= in_utc(filters.since))
    if filters.until:
        conditions.append(Message.created_at < in_utc(filters.until))
    return conditions


def in_utc(moment: datetime) -> datetime:
    """A filter bound in UTC (naive ones are UTC), which asyncpg can always encode.

    An offset can put a valid timestamp's UTC instant outside years 1 to 9999
    (`0001-01-01T00:00:00+01:00`); such a bound is clamped to the edge it passed, which
    selects the same messages.
    """
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        edge = datetime.min if moment.year == 1 else datetime.max
        return edge.replace(tzinfo=UTC)


async def find_notification(
    session: AsyncSession, *, tenant_id: uuid.UUID, mode: str, notification_id: uuid.UUID
) -> Notification | None:
    """The notification alone (by its primary key), if it is the tenant's and of `mode`."""
    found: Notification | None = await session.scalar(
        select(Notification).where(
            Notification.tenant_id == tenant_id,
            Notification.mode == mode,
            Notification.id == notification_id,
        )
    )
    return found


async def get_notification(
    session: AsyncSession, *, tenant_id: uuid.UUID, mode: str, notification_id: uuid.UUID
) -> NotificationView | None:
    notification = await session.scalar(
        select(Notification).where(
            Notification.tenant_id == tenant_id,
            Notification.mode == mode,
            Notification.id == notification_id,
        )
    )
    if notification is None:
        return None
    # Kept by triggers on messages: summing them does not read the messages (tallies.py).
    counts = await tallies.counts(session, notification_id=notification.id)
    page = await list_messages(
        session,
        tenant_id=tenant_id,
        mode=mode,
        filters=MessageFilters(notification_id=notification_id),
        limit=MESSAGES_SHOWN,
        cursor=None,
    )
    return NotificationView(notification, counts, page.items, page.has_more)


async def list_messages(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    mode: str,
    filters: MessageFilters,
    limit: int,
    cursor: uuid.UUID | None,
) -> Page[MessageView]:
    conditions = message_conditions(tenant_id, mode, filters)
    return await message_page(session, conditions, limit=limit, cursor=cursor)


async def message_page(
    session: AsyncSession,
    conditions: list[ColumnElement[bool]],
    *,
    limit: int,
    cursor: uuid.UUID | None,
) -> Page[MessageView]:
    """Messages matching `conditions` (which must include the tenant and mode), newest first."""
    query = (
        select(Message, Recipient.external_id)
        .join(Recipient, Recipient.id == Message.recipient_id)
        .where(*conditions)
    )
    if cursor is not None:
        query = query.where(Message.id < cursor)
    rows = (await session.execute(query.order_by(Message.id.desc()).limit(limit + 1))).all()
    views = [MessageView(message, external_id) for message, external_id in rows[:limit]]
    has_more = len(rows) > limit
    return Page(views, has_more, str(views[-1].message.id) if has_more and views else None)


async def get_message(
    session: AsyncSession, *, tenant_id: uuid.UUID, mode: str, message_id: uuid.UUID
) -> tuple[MessageView, list[Attempt]] | None:
    """One message of the tenant and every attempt made to deliver it, oldest first."""
    row = (
        await session.execute(
            select(Message, Recipient.external_id)
            .join(Recipient, Recipient.id == Message.recipient_id)
            .where(Message.tenant_id == tenant_id, Message.mode == mode, Message.id == message_id)
        )
    ).first()
    if row is None:
        return None
    attempts = await session.scalars(
        select(Attempt)
        .where(Attempt.tenant_id == tenant_id, Attempt.message_id == message_id)
        .order_by(Attempt.id)
    )
    return MessageView(row[0], row[1]), list(attempts)


@dataclass(frozen=True)
class Cancelled:
    notification: Notification
    messages: int  # cancelled now, and an audience's held ones its dispatch cancels next
    jobs: list[outbox.Job]  # to enqueue once committed


async def cancel(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    mode: str,
    notification_id: uuid.UUID,
    role: str | None = None,
    actor: str | None = None,
) -> Cancelled | None:
    """Cancel the notification and every message not yet handed to a provider.

    An audience's messages still held for release cannot be sent once it is cancelled;
    its dispatch job cancels them in pages (a million in one statement would hold the
    request for as long), and is enqueued for that."""
    roles.require(role, "cancel_notifications")
    notification = await session.scalar(
        select(Notification)
        .where(
            Notification.tenant_id == tenant_id,
            Notification.mode == mode,
            Notification.id == notification_id,
        )
        .with_for_update()  # waits for a dispatch in progress, so none of its messages escape
    )
    if notification is None:
        return None
    if notification.status in ("accepted", "dispatched", "paused"):
        notification.status = "cancelled"
    audience = expansion.is_audience(notification)
    result = await session.execute(
        update(Message)
        .where(
            Message.tenant_id == tenant_id,
            Message.notification_id == notification_id,
            Message.status.in_(("queued", "retrying")),
            *([Message.next_attempt_at.is_distinct_from(expansion.HELD)] if audience else []),
        )
        .values(status="cancelled", next_attempt_at=None, updated_at=func.now())
    )
    cancelled: int = result.rowcount  # type: ignore[attr-defined]
    jobs = []
    if audience and notification.releasing:
        cancelled += await expansion.held_count(session, notification.id)
        # Due now: the relay enqueues the job again if this one is lost.
        notification.dispatch_after = utcnow()
        jobs.append(outbox.later_dispatch(notification.id, notification.priority, utcnow()))
    await _audit(session, actor, notification, "notification.cancelled", cancelled)
    return Cancelled(notification, cancelled, jobs)


async def _audit(
    session: AsyncSession,
    actor: str | None,
    notification: Notification,
    action: str,
    messages: int,
) -> None:
    if actor is None:
        return
    await audit.append(
        session,
        tenant_id=notification.tenant_id,
        actor=actor,
        action=action,
        target=f"notification:{notification.id}",
        details={"mode": notification.mode, "messages": messages},
    )


class NotPausable(Exception):
    """The notification's status does not allow it (pausing a cancelled one, say)."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


@dataclass(frozen=True)
class Control:
    notification: Notification
    messages: int  # the messages it held (pause) or made due again (resume)
    jobs: list[outbox.Job]  # to enqueue once committed (resume)


async def pause(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    mode: str,
    notification_id: uuid.UUID,
    role: str | None = None,
    actor: str | None = None,
) -> Control | None:
    """Hold the notification's messages not sent yet, and its dispatch if it has not run."""
    roles.require(role, "cancel_notifications")
    notification = await _locked(session, tenant_id, mode, notification_id)
    if notification is None:
        return None
    if notification.status not in ("accepted", "dispatched"):
        raise NotPausable(notification.status)
    notification.status = "paused"
    audience = expansion.is_audience(notification)
    held = await session.execute(
        update(Message)
        .where(
            Message.tenant_id == tenant_id,
            Message.notification_id == notification_id,
            Message.status.in_(("queued", "retrying")),
            # An audience's messages not released yet are held already.
            *([Message.next_attempt_at.is_distinct_from(expansion.HELD)] if audience else []),
        )
        .values(next_attempt_at=text("'infinity'"), updated_at=func.now())
    )
    holding: int = held.rowcount  # type: ignore[attr-defined]
    if audience and notification.releasing:
        holding = await expansion.held_count(session, notification.id)
    await _audit(session, actor, notification, "notification.paused", holding)
    return Control(notification, holding, [])


async def resume(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    mode: str,
    notification_id: uuid.UUID,
    page: int = RESUME_PAGE,
    role: str | None = None,
    actor: str | None = None,
) -> Control | None:
    """Let a paused notification go on: its held messages are due now (their deliver jobs
    returned, a job per batch), or its dispatch runs (now, or at its send_at)."""
    roles.require(role, "cancel_notifications")
    control = await _resume(session, tenant_id, mode, notification_id, page)
    if control is not None:
        await _audit(session, actor, control.notification, "notification.resumed", control.messages)
    return control


async def _resume(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    mode: str,
    notification_id: uuid.UUID,
    page: int,
) -> Control | None:
    notification = await _locked(session, tenant_id, mode, notification_id)
    if notification is None:
        return None
    if notification.status != "paused":
        raise NotPausable(notification.status)
    now = utcnow()
    if expansion.is_audience(notification):
        # Its held messages (those the pause held among them) are released at the tenant's
        # pace again by its dispatch, which also writes the rest of the audience if the
        # pause came before the end.
        notification.status = "accepted" if notification.dispatched_at is None else "dispatched"
        notification.dispatch_after = now  # the relay enqueues the job again if it is lost
        held = await expansion.held_count(session, notification.id)
        at = max(now, notification.send_at or now)
        return Control(
            notification, held, [outbox.later_dispatch(notification.id, notification.priority, at)]
        )
    if notification.dispatched_at is None:
        notification.status = "accepted"
        at = max(now, notification.send_at or now)
        job = outbox.later_dispatch(notification.id, notification.priority, at)
        return Control(notification, 0, [job])
    notification.status = "dispatched"
    # What the pause held, and what came back meanwhile from a send under way and found the
    # notification paused (its retry is due, its job spent): all due now, with new jobs.
    # Retries due later keep the jobs that will deliver them.
    due = or_(
        Message.next_attempt_at == text("'infinity'"),
        Message.next_attempt_at.is_(None),
        Message.next_attempt_at <= now,
    )
    jobs: list[outbox.Job] = []
    released = 0
    after: uuid.UUID | None = None
    while True:  # keyset pages: however many it held, no page is larger than `page`
        query = (
            update(Message)
            .where(
                Message.tenant_id == tenant_id,
                Message.notification_id == notification_id,
                Message.status.in_(("queued", "retrying")),
                due,
                Message.id.in_(
                    select(Message.id)
                    .where(
                        Message.tenant_id == tenant_id,
                        Message.notification_id == notification_id,
                        Message.status.in_(("queued", "retrying")),
                        due,
                        *([Message.id > after] if after is not None else []),
                    )
                    .order_by(Message.id)
                    .limit(page)
                    .scalar_subquery()
                ),
            )
            .values(next_attempt_at=now, updated_at=func.now())
            .returning(Message.id)
        )
        ids = sorted((await session.scalars(query)).all())
        released += len(ids)
        # Tagged with the time: a deliver job of an earlier resume may still hold its id.
        tag = str(int(now.timestamp() * 1000))
        jobs += [
            outbox.redeliver("resume", priority, batch, tag=tag)
            for priority, batch in outbox.batches((notification.priority, i) for i in ids)
        ]
        if len(ids) < page:
            return Control(notification, released, jobs)
        after = ids[-1]


async def _locked(
    session: AsyncSession, tenant_id: uuid.UUID, mode: str, notification_id: uuid.UUID
) -> Notification | None:
    # The row lock waits for a dispatch in progress, so none of its messages escape.
    found: Notification | None = await session.scalar(
        select(Notification)
        .where(
            Notification.tenant_id == tenant_id,
            Notification.mode == mode,
            Notification.id == notification_id,
        )
        .with_for_update()
    )
    return found
