"""Reading the dead-letter queue (messages with status `failed`), replaying and discarding.

Every function acts on the failed messages of one tenant and mode: a test key can neither see
nor replay live messages. A group (error class, provider, the last attempt's status code) is
what the dashboard shows, opens and replays or discards as one; its None values match NULL.
Replay and discard take the acting member's role (None for an API key): the service refuses
a role that may not manage the DLQ (app/auth/roles.py).

Replay and discard are UPDATEs guarded by `status = 'failed'`: concurrent calls selecting the
same message move it once, and only the call that moved it sees it returned. A replay goes in
pages of the outbox's batch size, each one transaction (audited) and one enqueue, so that a
large group is never held in memory or in one lock.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, ScalarSelect, func, select, true, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit import service as audit
from app.auth import roles
from app.delivery import outbox
from app.notifications.models import Attempt, Message, Notification
from app.notifications.queries import MessageFilters, MessageView, message_conditions, message_page
from app.pagination import Page

DISCARDED = "discarded"


@dataclass(frozen=True)
class GroupKey:
    """A group of failed messages: None matches NULL (a render failure has no provider)."""

    error_class: str | None
    provider: str | None
    status_code: int | None


@dataclass(frozen=True)
class Selection:
    """Explicit ids, or every failed message matching the filters (and the group)."""

    ids: list[uuid.UUID] | None = None
    filters: MessageFilters | None = None
    group: GroupKey | None = None


@dataclass(frozen=True)
class Group:
    error_class: str | None
    provider: str | None
    status_code: int | None
    count: int
    oldest: datetime | None = None  # when its first and last messages failed
    newest: datetime | None = None

    @property
    def key(self) -> GroupKey:
        return GroupKey(self.error_class, self.provider, self.status_code)


@dataclass(frozen=True)
class ReplayOutcome:
    replayed: int  # messages this call moved back to queued
    not_replayable: int


def _conditions(
    tenant_id: uuid.UUID, mode: str, filters: MessageFilters | None
) -> list[ColumnElement[bool]]:
    failed = replace(filters or MessageFilters(), status="failed")
    return message_conditions(tenant_id, mode, failed)


# A message's attempts newest first: `n` restarts at 1 after a replay, the id does not. By
# `id + 0`, which no index provides: ordered by `id`, the planner (without statistics) walks
# the primary key backwards through every tenant's attempts, for each message, rather than
# take the message's few attempts from ix_attempts_message_id and sort them.
_NEWEST_ATTEMPT_FIRST = (Attempt.id + 0).desc()


def _last_status_code() -> ScalarSelect[int | None]:
    """The status code of the message's last attempt (ix_attempts_message_id)."""
    return (
        select(Attempt.status_code)
        .where(Attempt.message_id == Message.id)
        .order_by(_NEWEST_ATTEMPT_FIRST)
        .limit(1)
        .scalar_subquery()
    )


def _in_group(group: GroupKey) -> list[ColumnElement[bool]]:
    return [
        Message.error_class.is_not_distinct_from(group.error_class),
        Message.provider.is_not_distinct_from(group.provider),
        _last_status_code().is_not_distinct_from(group.status_code),
    ]


def _selected(tenant_id: uuid.UUID, mode: str, selection: Selection) -> list[ColumnElement[bool]]:
    conditions = _conditions(tenant_id, mode, selection.filters)
    if selection.ids is not None:
        conditions.append(Message.id.in_(selection.ids))
    if selection.group is not None:
        conditions += _in_group(selection.group)
    return conditions


# A message whose content never rendered has nothing to deliver: it is not replayable.
_REPLAYABLE = Message.render_id.is_not(None)


async def list_failed(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    mode: str,
    filters: MessageFilters,
    limit: int,
    cursor: uuid.UUID | None,
    group: GroupKey | None = None,
) -> Page[MessageView]:
    """Failed messages newest first (ix_messages_failed), of one group if given."""
    conditions = _conditions(tenant_id, mode, filters)
    if group is not None:
        conditions += _in_group(group)
    return await message_page(session, conditions, limit=limit, cursor=cursor)


async def groups(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    mode: str,
    filters: MessageFilters,
    scan_limit: int | None = None,
) -> list[Group]:
    """Counts of every matching failed message by (error class, provider, last status code),
    or of the newest `scan_limit` of them: a page that must answer fast whatever the size
    of the queue bounds the scan (`more_failed_than` tells it whether it cut)."""
    recent = select(
        Message.id,
        Message.error_class,
        Message.provider,
        func.coalesce(Message.updated_at, Message.created_at).label("failed_at"),
    ).where(*_conditions(tenant_id, mode, filters))
    if scan_limit is not None:
        recent = recent.order_by(Message.id.desc()).limit(scan_limit)  # ix_messages_failed
    failed = recent.subquery("failed")
    last_attempt = (
        select(Attempt.status_code)
        .where(Attempt.message_id == failed.c.id)
        .order_by(_NEWEST_ATTEMPT_FIRST)
        .limit(1)
        .lateral("last_attempt")
    )
    count = func.count().label("count")
    rows = await session.execute(
        select(
            failed.c.error_class,
            failed.c.provider,
            last_attempt.c.status_code,
            count,
            func.min(failed.c.failed_at),
            func.max(failed.c.failed_at),
        )
        .select_from(failed)
        .outerjoin(last_attempt, true())
        .group_by(failed.c.error_class, failed.c.provider, last_attempt.c.status_code)
        .order_by(count.desc(), failed.c.error_class, failed.c.provider)
    )
    return [Group(row[0], row[1], row[2], int(row[3]), row[4], row[5]) for row in rows]


async def more_failed_than(
    session: AsyncSession, *, tenant_id: uuid.UUID, mode: str, limit: int
) -> bool:
    """Whether the tenant's mode has more than `limit` failed messages (reads at most
    `limit` + 1 entries of ix_messages_failed)."""
    beyond = await session.scalar(
        select(Message.id)
        .where(*_conditions(tenant_id, mode, None))
        .order_by(Message.id.desc())
        .offset(limit)
        .limit(1)
    )
    return beyond is not None


async def count(
    session: AsyncSession, *, tenant_id: uuid.UUID, mode: str, selection: Selection
) -> tuple[int, int]:
    """(replayable, not replayable) failed messages the selection matches."""
    row = (
        await session.execute(
            select(
                func.count().filter(_REPLAYABLE), func.count().filter(Message.render_id.is_(None))
            ).where(*_selected(tenant_id, mode, selection))
        )
    ).one()
    return int(row[0]), int(row[1])


def _audit_details(selection: Selection, mode: str, counts: dict[str, int]) -> dict[str, Any]:
    details: dict[str, Any] = {**counts, "mode": mode}
    if selection.ids is not None:
        details["ids"] = [str(i) for i in selection.ids]
    if selection.filters is not None:
        details["filter"] = {
            key: value.isoformat() if isinstance(value, datetime) else str(value)
            for key, value in vars(selection.filters).items()
            if value is not None
        }
    if selection.group is not None:
        details["group"] = vars(selection.group)
    return details


async def replay(
    session: AsyncSession,
    queue: outbox.Outbox,
    *,
    tenant_id: uuid.UUID,
    mode: str,
    selection: Selection,
    actor: str,
    role: str | None = None,
) -> ReplayOutcome:
    """Move matching failed messages back to queued and enqueue their delivery.

    In pages of outbox.BATCH_SIZE messages: each page is one transaction, committed here
    with its audit entry, then one enqueue of its deliver jobs (the session must hold
    nothing uncommitted). A lost enqueue leaves the page queued, for the sweeper.
    """
    roles.require(role, "manage_dlq")
    conditions = _selected(tenant_id, mode, selection)
    not_replayable = int(
        await session.scalar(
            select(func.count())
            .select_from(Message)
            .where(*conditions, Message.render_id.is_(None))
        )
        or 0
    )
    call = uuid.uuid4().hex  # the job ids of this call's pages: only this call moved them
    replayed = page = 0
    while True:
        moved = await _replay_page(session, conditions)
        if moved or page == 0:
            counts = {"count": len(moved), "not_replayable": not_replayable if page == 0 else 0}
            await audit.append(
                session,
                tenant_id=tenant_id,
                actor=actor,
                action="dlq.replayed",
                target="dlq",
                details=_audit_details(selection, mode, counts),
            )
        await session.commit()
        keyed = (((channel, priority), message_id) for message_id, channel, priority in moved)
        await queue.enqueue_after_commit(
            [
                outbox.redeliver("replay", priority, ids, f"{call}.{page}")
                for (_, priority), ids in outbox.batches(keyed)
            ]
        )
        replayed += len(moved)
        page += 1
        if len(moved) < outbox.BATCH_SIZE:
            return ReplayOutcome(replayed, not_replayable)


async def _replay_page(
    session: AsyncSession, conditions: list[ColumnElement[bool]]
) -> list[tuple[uuid.UUID, str, str]]:
    """Up to BATCH_SIZE replayable failed messages moved back to queued: (id, channel,
    priority). SKIP LOCKED: a message a concurrent call is moving is that call's."""
    # A CTE, run once: as an IN (subquery) PostgreSQL may rescan it per row updated, and
    # each rescan skips the rows this UPDATE already changed and locks the next page.
    page = (
        select(Message.id)
        .where(*conditions, _REPLAYABLE)
        .order_by(Message.id)
        .limit(outbox.BATCH_SIZE)
        .with_for_update(of=Message, skip_locked=True)
        .cte("page")
        .prefix_with("MATERIALIZED")
    )
    rows = await session.execute(
        update(Message)
        .where(
            Message.id == page.c.id,
            Message.status == "failed",
            Notification.id == Message.notification_id,
        )
        .values(
            status="queued",
            # A replay gets a whole retry budget of its own: attempts and window start anew.
            attempts=0,
            rate_limited_attempts=0,
            retry_window_from=func.now(),
            next_attempt_at=None,
            claimed_until=None,
            error_class=None,
            last_error=None,
            updated_at=func.now(),
        )
        .returning(Message.id, Message.channel, Notification.priority),
        execution_options={"synchronize_session": False},
    )
    return [(row[0], row[1], row[2]) for row in rows]


async def discard(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    mode: str,
    selection: Selection,
    actor: str,
    role: str | None = None,
) -> int:
    """Move matching failed messages to cancelled (skip_reason `discarded`); audited."""
    roles.require(role, "manage_dlq")
    result = await session.execute(
        update(Message)
        .where(*_selected(tenant_id, mode, selection))
        .values(
            status="cancelled",
            skip_reason=DISCARDED,
            next_attempt_at=None,
            claimed_until=None,
            updated_at=func.now(),
        ),
        execution_options={"synchronize_session": False},
    )
    discarded = int(result.rowcount)  # type: ignore[attr-defined]
    await audit.append(
        session,
        tenant_id=tenant_id,
        actor=actor,
        action="dlq.discarded",
        target="dlq",
        details=_audit_details(selection, mode, {"count": discarded}),
    )
    return discarded
