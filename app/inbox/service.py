"""Reading and marking a recipient's inbox: sent messages of the inbox channel."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.notifications.models import Message, Render

_INBOX = (Message.channel == "inbox", Message.status == "sent")


@dataclass(frozen=True)
class InboxItem:
    id: uuid.UUID
    notification_id: uuid.UUID
    content: dict[str, Any]
    created_at: datetime
    read_at: datetime | None


@dataclass(frozen=True)
class InboxPage:
    items: list[InboxItem]
    unread_count: int
    has_more: bool
    next_cursor: str | None


async def list_inbox(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    recipient_id: uuid.UUID,
    unread_only: bool,
    limit: int,
    cursor: uuid.UUID | None,
) -> InboxPage:
    mine = (Message.tenant_id == tenant_id, Message.recipient_id == recipient_id, *_INBOX)
    query = (
        select(
            Message.id, Message.notification_id, Render.content, Message.created_at, Message.read_at
        )
        .join(Render, Render.id == Message.render_id)
        .where(*mine)
    )
    if unread_only:
        query = query.where(Message.read_at.is_(None))
    if cursor is not None:
        query = query.where(Message.id < cursor)
    rows = (await session.execute(query.order_by(Message.id.desc()).limit(limit + 1))).all()
    unread = await session.scalar(
        select(func.count()).select_from(Message).where(*mine, Message.read_at.is_(None))
    )
    items = [InboxItem(*row) for row in rows[:limit]]
    has_more = len(rows) > limit
    return InboxPage(items, int(unread or 0), has_more, str(items[-1].id) if has_more else None)


class ItemNotFound(LookupError):
    """The id is not an item of this recipient's inbox (nor a message they may see)."""


async def mark_read(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    recipient_id: uuid.UUID,
    message_id: uuid.UUID | None,
) -> int:
    """Mark one item (or, with no id, every unread item) read; returns how many changed.

    An item already read changes nothing (0); an id that is no item of this inbox raises
    ItemNotFound.
    """
    mine = (Message.tenant_id == tenant_id, Message.recipient_id == recipient_id, *_INBOX)
    query = update(Message).where(*mine, Message.read_at.is_(None)).values(read_at=func.now())
    if message_id is not None:
        query = query.where(Message.id == message_id)
    result = await session.execute(query)
    changed = int(result.rowcount)  # type: ignore[attr-defined]
    # Nothing changed: the item was read already, or it is not one of this inbox.
    if message_id is not None and not changed and not await _is_item(session, mine, message_id):
        raise ItemNotFound(str(message_id))
    return changed


async def _is_item(session: AsyncSession, mine: tuple[Any, ...], message_id: uuid.UUID) -> bool:
    found = await session.scalar(select(Message.id).where(*mine, Message.id == message_id))
    return found is not None
