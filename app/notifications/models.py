"""notifications, renders, messages and attempts: the send path's durable state.

A notification is one accepted request. Dispatch turns it into messages, one per
(recipient, channel, address), each pointing at the rendered content it delivers.
Every provider call is an attempt. Triggers on messages keep their tallies by status
(app/notifications/tallies.py).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Identity,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, CreatedAt, UuidPrimaryKey
from app.modes import mode_check, mode_column
from app.usage import overflow

PRIORITIES = ("high", "normal", "low")
# `refused`: a broadcast refused whole at dispatch, larger than its quota's remainder
# (app/usage/overflow.py); it wrote no message.
NOTIFICATION_STATUSES = ("accepted", "dispatched", "paused", "cancelled", "failed", "refused")
# The send path's statuses, then those only providers' receipts set (app/receipts/progress.py):
# they move a sent message forward only, and bounced, complained and undelivered are final.
SEND_STATUSES = ("queued", "sending", "sent", "retrying", "failed", "skipped", "cancelled")
RECEIPT_STATUSES = ("delivered", "opened", "clicked", "bounced", "complained", "undelivered")
MESSAGE_STATUSES = SEND_STATUSES + RECEIPT_STATUSES
# The predicate of the delivery log's indexes: true of every row, implied only by statements
# that name the mode (migration 0028).
NAMED_MODE = "mode IS NOT NULL"
# Statuses a message passes through on its way (claimed, retried): not in the delivery log's
# status index, which each claim would otherwise add an entry to.
IN_FLIGHT = ("queued", "sending", "retrying")
SETTLED = "status NOT IN ('queued', 'sending', 'retrying')"


class Notification(UuidPrimaryKey, CreatedAt, Base):
    __tablename__ = "notifications"
    __table_args__ = (
        # Idempotency-Keys are per mode: a test request cannot take a key a live one needs.
        UniqueConstraint("tenant_id", "mode", "idempotency_key"),
        CheckConstraint(f"priority IN {PRIORITIES!r}", name="priority"),
        CheckConstraint(f"status IN {NOTIFICATION_STATUSES!r}", name="status"),
        CheckConstraint(overflow.CHECK, name="on_quota_exceeded"),
        Index("ix_notifications_tenant_id_mode_id", "tenant_id", "mode", "id"),
        # The delivery log's template filter: the template's notifications, newest first.
        Index(
            "ix_notifications_tenant_id_mode_template_key_id",
            "tenant_id",
            "mode",
            "template_key",
            "id",
            postgresql_where=text(NAMED_MODE),
        ),
        mode_check(),
        Index(
            "ix_notifications_pending",
            "created_at",
            postgresql_where=text("status = 'accepted'"),
        ),
        # notification.completed: dispatched notifications not yet seen with nothing pending.
        Index(
            "ix_notifications_completing",
            "id",
            postgresql_where=text("status = 'dispatched' AND completed_at IS NULL"),
        ),
        # The relay: notifications whose held messages wait for a release run.
        Index(
            "ix_notifications_releasing",
            "dispatch_after",
            postgresql_where=text("releasing"),
        ),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    api_key_id: Mapped[uuid.UUID | None]
    mode: Mapped[str] = mode_column()
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))
    template_key: Mapped[str] = mapped_column(String(100))
    template_version: Mapped[int] = mapped_column(Integer)
    category: Mapped[str] = mapped_column(String(64))
    channels: Mapped[list[str]] = mapped_column(ARRAY(String(16)))
    audience: Mapped[dict[str, Any]] = mapped_column(JSONB)
    data: Mapped[dict[str, Any]] = mapped_column(JSONB)
    locale: Mapped[str | None] = mapped_column(String(35))
    priority: Mapped[str] = mapped_column(String(8))
    send_at: Mapped[datetime | None]
    status: Mapped[str] = mapped_column(String(16), default="accepted")
    dispatched_at: Mapped[datetime | None]
    problems: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict, server_default="{}")
    # W3C traceparent of the request that accepted it: dispatch and delivery continue its trace.
    trace_context: Mapped[str | None] = mapped_column(Text)
    # Whether its category was critical when it was dispatched (kill switches spare those).
    critical: Mapped[bool | None]
    # Dispatch runs begun since the last one that finished (counted before each starts, so a
    # worker killed mid-dispatch counts too); past MAX_DISPATCH_ATTEMPTS it is failed.
    dispatch_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # The last dispatch run's error, for the reason it is failed with.
    dispatch_error: Mapped[str | None] = mapped_column(Text)
    # A dispatch deferred for the tenant's render budget runs again at this time.
    dispatch_after: Mapped[datetime | None]
    # An audience's expansion: the last recipient id whose messages are written (the next
    # page starts after it), so a run that stopped part-way resumes where it did.
    expansion_cursor: Mapped[uuid.UUID | None]
    # Its messages are written held and released a window at a time (app/notifications/
    # expansion.py); true until the last is released. dispatch_after is the next release.
    releasing: Mapped[bool] = mapped_column(default=False, server_default=text("false"))
    # When it was first seen dispatched with no message queued, sending or retrying (and its
    # notification.completed event written); app/webhooks/completion.py.
    completed_at: Mapped[datetime | None]
    # What the request chose for a broadcast larger than the quota left (null: the tenant's
    # setting at dispatch); app/usage/overflow.py.
    on_quota_exceeded: Mapped[str | None] = mapped_column(String(16))
    # Its audience was counted and held whole against the quota before its first page
    # (`refuse`): its pages use that hold, and a re-run does not count it again.
    quota_held: Mapped[bool] = mapped_column(default=False, server_default=text("false"))


class Render(UuidPrimaryKey, Base):
    """Content rendered once per (template, channel, locale), or per recipient when personalised."""

    __tablename__ = "renders"

    notification_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("notifications.id", ondelete="CASCADE"), index=True
    )
    tenant_id: Mapped[uuid.UUID]
    channel: Mapped[str] = mapped_column(String(16))
    locale: Mapped[str | None] = mapped_column(String(35))
    content: Mapped[dict[str, Any]] = mapped_column(JSONB)


class Message(UuidPrimaryKey, CreatedAt, Base):
    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("notification_id", "recipient_id", "channel", "address"),
        CheckConstraint(f"status IN {MESSAGE_STATUSES!r}", name="status"),
        Index("ix_messages_tenant_id_mode_id", "tenant_id", "mode", "id"),
        mode_check(),
        Index(
            "ix_messages_inbox",
            "tenant_id",
            "recipient_id",
            "id",
            postgresql_where=text("channel = 'inbox' AND status = 'sent'"),
        ),
        # The sweeper: messages due whose job may be lost. Held messages ('infinity') and
        # claimed ones are not in it, and no statement but the sweeper's implies its
        # predicate, so a claim or a release never reads it (migration 0017).
        Index(
            "ix_messages_due",
            "next_attempt_at",
            postgresql_where=text(
                "status IN ('queued', 'retrying')"
                " AND (next_attempt_at IS NULL OR next_attempt_at < 'infinity')"
            ),
        ),
        # The sweeper: claims whose lease ran out.
        Index(
            "ix_messages_claims",
            "claimed_until",
            postgresql_where=text("status = 'sending'"),
        ),
        # An audience's messages held for release, in id order (app/notifications/expansion.py).
        Index(
            "ix_messages_held",
            "notification_id",
            "id",
            postgresql_where=text("next_attempt_at = 'infinity'"),
        ),
        # The dead-letter queue of a tenant, newest first.
        Index(
            "ix_messages_failed",
            "tenant_id",
            "mode",
            "id",
            postgresql_where=text("status = 'failed'"),
        ),
        # The delivery log's filters (and a recipient's page, by recipient_id), each a range
        # of one index, newest first; partial on a predicate every row meets, which only
        # statements naming the mode imply, so that the send path's never take them; the
        # status one leaves the in-flight statuses out, which a claim would otherwise add
        # to (migration 0028, app/notifications/log.py).
        Index(
            "ix_messages_tenant_id_mode_status_id",
            "tenant_id",
            "mode",
            "status",
            "id",
            postgresql_where=text(f"{NAMED_MODE} AND {SETTLED}"),
        ),
        Index(
            "ix_messages_tenant_id_mode_recipient_id_id",
            "tenant_id",
            "mode",
            "recipient_id",
            "id",
            postgresql_where=text(NAMED_MODE),
        ),
        Index(
            "ix_messages_tenant_id_mode_notification_id_id",
            "tenant_id",
            "mode",
            "notification_id",
            "id",
            postgresql_where=text(NAMED_MODE),
        ),
    )

    notification_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("notifications.id", ondelete="CASCADE")
    )
    tenant_id: Mapped[uuid.UUID]
    mode: Mapped[str] = mode_column()  # its notification's, for scoped reads (DLQ, lists)
    # The recipient and the render, by id but without a foreign key: checked per row, each
    # key cost a page of a broadcast a lookup and a row lock per message, and neither ever
    # goes without the notification, which takes its messages with it (migration 0018).
    recipient_id: Mapped[uuid.UUID]
    channel: Mapped[str] = mapped_column(String(16))
    address: Mapped[str] = mapped_column(Text)
    render_id: Mapped[uuid.UUID | None]
    status: Mapped[str] = mapped_column(String(16))
    skip_reason: Mapped[str | None] = mapped_column(String(32))
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Attempts answered "rate limited": recorded, but not spent from the retry budget.
    rate_limited_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    next_attempt_at: Mapped[datetime | None]
    # Start of the retry window (the tenant's window_hours); NULL: created_at. Replay resets it.
    retry_window_from: Mapped[datetime | None]
    claimed_until: Mapped[datetime | None]
    provider: Mapped[str | None] = mapped_column(String(32))
    provider_message_id: Mapped[str | None] = mapped_column(String(255))
    error_class: Mapped[str | None] = mapped_column(String(16))
    last_error: Mapped[str | None] = mapped_column(Text)
    sent_at: Mapped[datetime | None]
    read_at: Mapped[datetime | None]
    updated_at: Mapped[datetime | None]


class Attempt(Base):
    __tablename__ = "attempts"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    message_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("messages.id", ondelete="CASCADE"), index=True
    )
    tenant_id: Mapped[uuid.UUID]
    n: Mapped[int] = mapped_column(Integer)
    provider: Mapped[str] = mapped_column(String(32))
    started_at: Mapped[datetime]
    latency_ms: Mapped[int] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(16))
    error_class: Mapped[str | None] = mapped_column(String(16))
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)


class MessageTally(Base):
    """A change in the number of a notification's messages of one status, written by the
    triggers on messages; a notification's counts are the sums of its rows
    (app/notifications/tallies.py)."""

    __tablename__ = "message_tallies"
    __table_args__ = (
        # The rows compaction has not folded yet, oldest first.
        Index("ix_message_tallies_deltas", "id", postgresql_where=text("NOT folded")),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    # No foreign key (its check would lock the notification's row on every claim and outcome):
    # a trigger on notifications deletes a deleted one's tallies.
    notification_id: Mapped[uuid.UUID] = mapped_column(index=True)
    status: Mapped[str] = mapped_column(String(16))
    n: Mapped[int] = mapped_column(BigInteger)
    # A sum written by compaction (or the migration's backfill), not a statement's change.
    folded: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
