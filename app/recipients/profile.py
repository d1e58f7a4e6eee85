"""One recipient as a person looks them up: addresses, switches, suppressions, topics, inbox
and latest messages, each read bounded and through an index.

The dashboard's recipient page reads this; every read is bound to the tenant and the mode,
and a recipient of another tenant or mode, or an erased one, is not found.
- the recipient: the primary key, then tenant, mode and erasure checked on the row;
- preferences: their primary keys (recipient first);
- suppressions: the unique key (tenant, mode, channel, address), one probe per address;
- topics: ix_topic_members_tenant_id_recipient_id, at most MAX_TOPICS;
- inbox: ix_messages_inbox (app/inbox/service.py);
- messages: ix_messages_tenant_id_mode_recipient_id_id, newest first, at most MAX_MESSAGES.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth import roles
from app.channels import CHANNELS
from app.crypto import Keyring
from app.inbox import service as inbox
from app.notifications.models import Message
from app.recipients import preferences, suppressions
from app.recipients.models import Recipient, Suppression, Topic, TopicMember
from app.recipients.planning import addresses

MAX_TOPICS = 100
MAX_MESSAGES = 20
MAX_INBOX = 10


@dataclass(frozen=True)
class TopicMembership:
    key: str
    name: str
    joined_at: datetime


@dataclass(frozen=True)
class MessageLine:
    """A message of the recipient, as a list shows it."""

    id: uuid.UUID
    notification_id: uuid.UUID
    channel: str
    status: str
    skip_reason: str | None
    provider: str | None
    error_class: str | None
    attempts: int
    created_at: datetime


@dataclass(frozen=True)
class RecipientProfile:
    recipient: Recipient
    addresses: list[tuple[str, str]]  # (channel, address), inbox left out
    preferences: preferences.PreferenceMap
    suppressions: list[Suppression]
    topics: list[TopicMembership]
    inbox: inbox.InboxPage
    messages: list[MessageLine]
    more_messages: bool


async def get_recipient_by_id(
    session: AsyncSession, *, tenant_id: uuid.UUID, mode: str, recipient_id: uuid.UUID
) -> Recipient | None:
    """The tenant's recipient of that id in that mode, unless erased.

    Found by the primary key alone, the tenant and mode checked on the row: said in the
    statement, they would open the indexes that start with (tenant_id, mode) to a planner
    without statistics, which took the unique key and read all of the tenant's recipients."""
    recipient: Recipient | None = await session.scalar(
        select(Recipient).where(Recipient.id == recipient_id)
    )
    if recipient is None or recipient.tenant_id != tenant_id or recipient.mode != mode:
        return None
    return None if recipient.erased_at is not None else recipient


def recipient_addresses(recipient: Recipient) -> list[tuple[str, str]]:
    """Every (channel, address) of the recipient but the inbox (their external id)."""
    return [
        (channel, address)
        for channel in CHANNELS
        if channel != "inbox"
        for address in addresses(recipient, channel)
    ]


async def topics_of(
    session: AsyncSession, *, tenant_id: uuid.UUID, mode: str, recipient_id: uuid.UUID
) -> list[TopicMembership]:
    rows = await session.execute(
        select(Topic.key, Topic.name, TopicMember.created_at)
        .join(
            Topic,
            (Topic.tenant_id == TopicMember.tenant_id)
            & (Topic.mode == TopicMember.mode)
            & (Topic.key == TopicMember.topic_key),
        )
        .where(
            TopicMember.tenant_id == tenant_id,
            TopicMember.recipient_id == recipient_id,
            TopicMember.mode == mode,
        )
        .order_by(TopicMember.topic_key)
        .limit(MAX_TOPICS)
    )
    return [TopicMembership(key, name, joined) for key, name, joined in rows]


async def latest_messages(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    mode: str,
    recipient_id: uuid.UUID,
    limit: int = MAX_MESSAGES,
) -> tuple[list[MessageLine], bool]:
    """The recipient's newest messages, and whether there are more."""
    rows = await session.execute(
        select(
            Message.id,
            Message.notification_id,
            Message.channel,
            Message.status,
            Message.skip_reason,
            Message.provider,
            Message.error_class,
            Message.attempts,
            Message.created_at,
        )
        .where(
            Message.tenant_id == tenant_id,
            Message.recipient_id == recipient_id,
            Message.mode == mode,
        )
        .order_by(Message.id.desc())
        .limit(limit + 1)
    )
    lines = [MessageLine(*row) for row in rows]
    return lines[:limit], len(lines) > limit


async def recipient_profile(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    mode: str,
    recipient_id: uuid.UUID,
    keyring: Keyring | None = None,
) -> RecipientProfile | None:
    """Everything the recipient page shows; None when there is no such recipient."""
    recipient = await get_recipient_by_id(
        session, tenant_id=tenant_id, mode=mode, recipient_id=recipient_id
    )
    if recipient is None:
        return None
    known = recipient_addresses(recipient)
    messages, more = await latest_messages(
        session, tenant_id=tenant_id, mode=mode, recipient_id=recipient.id
    )
    return RecipientProfile(
        recipient=recipient,
        addresses=known,
        preferences=await preferences.get_preferences(
            session, tenant_id=tenant_id, recipient_id=recipient.id
        ),
        suppressions=await suppressions.suppressions_for(
            session, tenant_id=tenant_id, mode=mode, addresses=known, keyring=keyring
        ),
        topics=await topics_of(session, tenant_id=tenant_id, mode=mode, recipient_id=recipient.id),
        inbox=await inbox.list_inbox(
            session,
            tenant_id=tenant_id,
            recipient_id=recipient.id,
            unread_only=False,
            limit=MAX_INBOX,
            cursor=None,
        ),
        messages=messages,
        more_messages=more,
    )


async def remove_suppression_of(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    mode: str,
    recipient: Recipient,
    suppression_id: uuid.UUID,
    actor: str,
    role: str | None = None,
    keyring: Keyring | None = None,
) -> Suppression | None:
    """Lift one of the recipient's suppressions (audited); None when it is not one of theirs.

    `role`: the acting member's (app/auth/roles.py); None for an API key."""
    roles.require(role, "manage_recipients")
    theirs = await suppressions.suppressions_for(
        session,
        tenant_id=tenant_id,
        mode=mode,
        addresses=recipient_addresses(recipient),
        keyring=keyring,
    )
    if suppression_id not in {s.id for s in theirs}:
        return None
    return await suppressions.remove_suppression(
        session,
        tenant_id=tenant_id,
        mode=mode,
        suppression_id=suppression_id,
        actor=actor,
        role=role,
    )
