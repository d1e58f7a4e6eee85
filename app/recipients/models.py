"""recipients, preferences, suppressions and topics: who may be reached, where and how.

Categories, which preferences name by key, are a domain of their own (app/categories/).

Every row carries tenant_id and its mode (app/modes.py). Preferences, topic preferences and
topic members reference their recipient through (tenant_id, recipient_id), so none can ever
point at another tenant's recipient; preferences of both kinds belong to their recipient's
mode.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.channels import CHANNELS
from app.db import Base, CreatedAt, UpdatedAt, UuidPrimaryKey
from app.modes import mode_check, mode_column

SUPPRESSION_REASONS = (
    "hard_bounce",
    "complaint",
    "unsubscribed",
    "invalid_address",
    "unregistered_device",
    "manual",
)


class Recipient(UuidPrimaryKey, CreatedAt, UpdatedAt, Base):
    __tablename__ = "recipients"
    __table_args__ = (
        UniqueConstraint("tenant_id", "mode", "external_id"),
        # The target of preferences' tenant-safe FK.
        UniqueConstraint("tenant_id", "id"),
        # Keyset pagination within a tenant's mode. Each index but the unique key leaves out
        # rows a lookup by external id does not exclude, so that such a lookup has only the
        # unique key to take, whatever the statistics say (migration 0019, lookups.py).
        Index(
            "ix_recipients_tenant_id_mode_id",
            "tenant_id",
            "mode",
            "id",
            postgresql_where=text("erased_at IS NULL"),
        ),
        Index(
            "ix_recipients_tenant_id_mode_email",
            "tenant_id",
            "mode",
            text("lower(email)"),
            "id",  # search pages by (e-mail, id): app/recipients/search.py
            postgresql_where=text("email IS NOT NULL"),
        ),
        Index(
            "ix_recipients_tenant_id_mode_phone",
            "tenant_id",
            "mode",
            "phone",
            "id",
            postgresql_where=text("phone IS NOT NULL"),
        ),
        mode_check(),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    mode: Mapped[str] = mode_column()
    external_id: Mapped[str] = mapped_column(String(200))
    email: Mapped[str | None] = mapped_column(String(320))
    phone: Mapped[str | None] = mapped_column(String(16))
    push_tokens: Mapped[list[dict[str, str]]] = mapped_column(
        JSONB, default=list, server_default=text("'[]'::jsonb")
    )
    webhook_url: Mapped[str | None] = mapped_column(String(2048))
    locale: Mapped[str | None] = mapped_column(String(35))
    timezone: Mapped[str | None] = mapped_column(String(64))
    data: Mapped[dict[str, Any]] = mapped_column(
        JSONB, default=dict, server_default=text("'{}'::jsonb")
    )
    erased_at: Mapped[datetime | None]
    # Inbox tokens issued before this instant are refused (POST …/inbox-tokens/revoke).
    inbox_tokens_valid_after: Mapped[datetime | None]


class Preference(UpdatedAt, Base):
    """One switch: recipient x category ('*' = every category) x channel."""

    __tablename__ = "preferences"
    __table_args__ = (
        ForeignKeyConstraint(
            ["tenant_id", "recipient_id"],
            ["recipients.tenant_id", "recipients.id"],
            ondelete="CASCADE",
            name="fk_preferences_recipient",
        ),
        CheckConstraint(f"channel IN {CHANNELS!r}", name="channel"),
    )

    tenant_id: Mapped[uuid.UUID]
    recipient_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    category: Mapped[str] = mapped_column(String(64), primary_key=True)
    channel: Mapped[str] = mapped_column(String(16), primary_key=True)
    enabled: Mapped[bool]


class TopicPreference(UpdatedAt, Base):
    """One switch: recipient x topic x channel, for notifications sent to that topic.

    There is no foreign key to topics: a recipient may turn a topic off before joining it,
    or before the tenant creates it (a sign-up form's unticked box), so the switch goes
    with the recipient alone. The primary key serves every lookup: a recipient's switches
    (GET, erasure, the cascade) and the switches of a page of recipients for one topic.
    """

    __tablename__ = "topic_preferences"
    __table_args__ = (
        ForeignKeyConstraint(
            ["tenant_id", "recipient_id"],
            ["recipients.tenant_id", "recipients.id"],
            ondelete="CASCADE",
            name="fk_topic_preferences_recipient",
        ),
        CheckConstraint(f"channel IN {CHANNELS!r}", name="channel"),
    )

    tenant_id: Mapped[uuid.UUID]
    recipient_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    topic_key: Mapped[str] = mapped_column(String(100), primary_key=True)
    channel: Mapped[str] = mapped_column(String(16), primary_key=True)
    enabled: Mapped[bool]


class Suppression(UuidPrimaryKey, CreatedAt, Base):
    __tablename__ = "suppressions"
    __table_args__ = (
        UniqueConstraint("tenant_id", "mode", "channel", "address"),
        Index("ix_suppressions_tenant_id_mode_id", "tenant_id", "mode", "id"),
        mode_check(),
        CheckConstraint(f"channel IN {CHANNELS!r}", name="channel"),
        CheckConstraint(f"reason IN {SUPPRESSION_REASONS!r}", name="reason"),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    mode: Mapped[str] = mode_column()
    channel: Mapped[str] = mapped_column(String(16))
    address: Mapped[str] = mapped_column(String(2048))
    reason: Mapped[str] = mapped_column(String(32))
    source: Mapped[str] = mapped_column(String(200))


class Topic(CreatedAt, UpdatedAt, Base):
    """A named group of recipients of one mode, which a tenant will notify at once.

    `member_count` is kept by the statements that add and remove members, in their own
    transaction, as a relative update: concurrent changes add up without a recount.
    """

    __tablename__ = "topics"
    __table_args__ = (mode_check(),)

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    mode: Mapped[str] = mapped_column(String(8), primary_key=True)
    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    description: Mapped[str] = mapped_column(Text, default="", server_default="")
    member_count: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))


class TopicMember(CreatedAt, Base):
    """A recipient's membership of a topic; it goes with the topic and with the recipient."""

    __tablename__ = "topic_members"
    __table_args__ = (
        ForeignKeyConstraint(
            ["tenant_id", "mode", "topic_key"],
            ["topics.tenant_id", "topics.mode", "topics.key"],
            ondelete="CASCADE",
            name="fk_topic_members_topic",
        ),
        ForeignKeyConstraint(
            ["tenant_id", "recipient_id"],
            ["recipients.tenant_id", "recipients.id"],
            ondelete="CASCADE",
            name="fk_topic_members_recipient",
        ),
        mode_check(),
        # Erasure finds a recipient's memberships here (and so does the cascade above).
        Index("ix_topic_members_tenant_id_recipient_id", "tenant_id", "recipient_id"),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    mode: Mapped[str] = mapped_column(String(8), primary_key=True)
    topic_key: Mapped[str] = mapped_column(String(100), primary_key=True)
    recipient_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
