"""receipts: every request providers' webhooks made to Herald, with its verdict.
message_events: what receipts reported about messages, one row per provider event: the
deduplication of repeated events and each message's timeline.

A receipt keeps the raw body (bounded, RECEIPT_BODY_LIMIT in app/receipts/service.py) and
its headers with secrets redacted, so a tenant can see exactly what a provider sent and why
it was or was not believed. Receipts and their events are kept for the plan's log retention
(app/receipts/service.py, delete_expired).
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
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base

VERDICTS = ("verified", "bad_signature", "stale", "replayed", "unknown_config", "unparseable")


class Receipt(Base):
    __tablename__ = "receipts"
    __table_args__ = (
        CheckConstraint(f"verdict IN {VERDICTS!r}", name="verdict"),
        CheckConstraint("mode IS NULL OR mode IN ('live', 'test')", name="mode"),
        Index("ix_receipts_tenant_id_mode_id", "tenant_id", "mode", "id"),
        # The filters of receipts lists (a page of one verdict, of one provider config, or
        # both), each read in id order (app/receipts/service.py list_receipts).
        Index("ix_receipts_tenant_id_mode_verdict_id", "tenant_id", "mode", "verdict", "id"),
        Index(
            "ix_receipts_tenant_id_mode_provider_config_id_id",
            "tenant_id",
            "mode",
            "provider_config_id",
            "id",
        ),
        Index(
            "ix_receipts_tenant_id_mode_provider_config_id_verdict_id",
            "tenant_id",
            "mode",
            "provider_config_id",
            "verdict",
            "id",
        ),
        # Retention deletes those past their time, in batches.
        Index("ix_receipts_retain_until", "retain_until"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)  # uuid7
    # None when the URL named no provider config Herald knows (unknown_config).
    tenant_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), nullable=True
    )
    mode: Mapped[str | None] = mapped_column(String(8), nullable=True)
    provider_config_id: Mapped[uuid.UUID]
    provider: Mapped[str | None] = mapped_column(String(16), nullable=True)
    received_at: Mapped[datetime]
    # received_at + the plan's log retention when it came (a plan changed later keeps it).
    retain_until: Mapped[datetime]
    verdict: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    body: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    body_size: Mapped[int] = mapped_column(Integer)
    headers: Mapped[dict[str, str]] = mapped_column(JSONB)
    event_count: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    new_events: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))


class MessageEvent(Base):
    """One provider event: applied to its message when it moved it forward (`applied`)."""

    __tablename__ = "message_events"
    __table_args__ = (
        # A provider event is taken once per provider config, however often it is posted.
        UniqueConstraint("provider_config_id", "provider_event_id"),
        # A message's timeline.
        Index("ix_message_events_message_id_occurred_at", "message_id", "occurred_at"),
        Index("ix_message_events_receipt_id", "receipt_id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    mode: Mapped[str] = mapped_column(String(8))
    provider_config_id: Mapped[uuid.UUID]
    provider_event_id: Mapped[str] = mapped_column(String(200))
    receipt_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("receipts.id", ondelete="CASCADE"))
    # None when the event named no message of the tenant's mode (kept, for the receipt's page).
    message_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("messages.id", ondelete="CASCADE"), nullable=True
    )
    kind: Mapped[str] = mapped_column(String(16))
    occurred_at: Mapped[datetime]
    detail: Mapped[dict[str, Any]] = mapped_column(JSONB)
    applied: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    created_at: Mapped[datetime]
