"""Reading the dead-letter queue (messages with status `failed`), replaying and discarding.

Every function acts on the failed messages of one tenant and mode: a test key can neither see
nor replay live messages. Replay and discard are each one UPDATE guarded by
`status = 'failed'`: concurrent calls selecting the same message move it once, and only the
call that moved it sees it returned.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, func, select, true, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit import service as audit
from app.notifications.models import Attempt, Message, Notification
from app.notifications.queries import MessageFilters, MessageView, message_conditions, message_page
from app.pagination import Page

DISCARDED = "discarded"


@dataclass(frozen=True)
class Selection:
    """Explicit ids, or every failed message matching the filters."""

    ids: list[uuid.UUID] | None = None
    filters: MessageFilters | None = None


@dataclass(frozen=True)
class Group:
    error_class: str | None
    provider: str | None
    status_code: int | None
    count: int


@dataclass(frozen=True)
class Replayed:
    id: uuid.UUID
    channel: str
    priority: str


@dataclass(frozen=True)
class ReplayOutcome:
    moved: list[Replayed]
    not_replayable: int


def _conditions(
    tenant_id: uuid.UUID, mode: str, filters: MessageFilters | None
) -> list[ColumnElement[bool]]:
    failed = replace(filters or MessageFilters(), status="failed")
    return message_conditions(tenant_id, mode, failed)


def _selected(tenant_id: uuid.UUID, mode: str, selection: Selection) -> list[ColumnElement[bool]]:
    conditions = _conditions(tenant_id, mode, selection.filters)
    if selection.ids is not None:
        conditions.append(Message.id.in_(selection.ids))
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
) -> Page[MessageView]:
    conditions = _conditions(tenant_id, mode, filters)
    return await message_page(session, conditions, limit=limit, cursor=cursor)


async def groups(
    session: AsyncSession, *, tenant_id: uuid.UUID, mode: str, filters: MessageFilters
) -> list[Group]:
    """Counts of every matching failed message by (error class, provider, last status code)."""
    last_attempt = (
        select(Attempt.status_code)
        .where(Attempt.message_id == Message.id)
        .order_by(Attempt.id.desc())  # `n` restarts at 1 after a replay; the id does not
        .limit(1)
        .lateral("last_attempt")
    )
    count = func.count().label("count")
    rows = await session.execute(
        select(Message.error_class, Message.provider, last_attempt.c.status_code, count)
        .select_from(Message)
        .outerjoin(last_attempt, true())
        .where(*_conditions(tenant_id, mode, filters))
        .group_by(Message.error_class, Message.provider, last_attempt.c.status_code)
        .order_by(count.desc(), Message.error_class, Message.provider)
    )
    return [Group(row[0], row[1], row[2], int(row[3])) for row in rows]


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
    return details


async def replay(
    session: AsyncSession, *, tenant_id: uuid.UUID, mode: str, selection: Selection, actor: str
) -> ReplayOutcome:
    """Move matching failed messages back to queued, in the caller's transaction; audited."""
    conditions = _selected(tenant_id, mode, selection)
    not_replayable = int(
        await session.scalar(
            select(func.count())
            .select_from(Message)
            .where(*conditions, Message.render_id.is_(None))
        )
        or 0
    )
    rows = await session.execute(
        update(Message)
        .where(*conditions, _REPLAYABLE, Notification.id == Message.notification_id)
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
    moved = [Replayed(row.id, row.channel, row.priority) for row in rows]
    await audit.append(
        session,
        tenant_id=tenant_id,
        actor=actor,
        action="dlq.replayed",
        target="dlq",
        details=_audit_details(
            selection, mode, {"count": len(moved), "not_replayable": not_replayable}
        ),
    )
    return ReplayOutcome(moved, not_replayable)


async def discard(
    session: AsyncSession, *, tenant_id: uuid.UUID, mode: str, selection: Selection, actor: str
) -> int:
    """Move matching failed messages to cancelled (skip_reason `discarded`); audited."""
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


def batches(moved: Sequence[Replayed], size: int) -> list[tuple[str, list[uuid.UUID]]]:
    """(priority, ids) batches of at most `size`, one set per (channel, priority)."""
    by_key: dict[tuple[str, str], list[uuid.UUID]] = {}
    for message in moved:
        by_key.setdefault((message.channel, message.priority), []).append(message.id)
    return [
        (priority, ids[start : start + size])
        for (_, priority), ids in by_key.items()
        for start in range(0, len(ids), size)
    ]
