"""Reading and marking a recipient's inbox (sent messages of the inbox channel), and
revoking the inbox tokens issued for a recipient."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit import service as audit
from app.inbox.tokens import RecipientPrincipal
from app.notifications.models import Message, Render
from app.recipients.models import Recipient

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


async def revoke_tokens(
    session: AsyncSession, *, tenant_id: uuid.UUID, recipient_id: uuid.UUID, actor: str
) -> datetime:
    """Refuse, from now on, every inbox token issued for the recipient until now; audited.

    The instant is taken from this process's clock, as tokens' issue times are.
    """
    now = datetime.now(UTC)
    await session.execute(
        update(Recipient)
        .where(Recipient.tenant_id == tenant_id, Recipient.id == recipient_id)
        .values(inbox_tokens_valid_after=now)
    )
    await audit.append(
        session,
        tenant_id=tenant_id,
        actor=actor,
        action="recipient.inbox_tokens_revoked",
        target=str(recipient_id),
        details={},
    )
    return now


def token_revoked(token: RecipientPrincipal, recipient: Recipient) -> bool:
    """Whether the token was issued before the recipient's last revocation."""
    valid_after = recipient.inbox_tokens_valid_after
    return valid_after is not None and token.issued_at_ms <= valid_after.timestamp() * 1000
