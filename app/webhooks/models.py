"""webhook_endpoints: where a tenant receives Herald's events, per mode; secrets sealed.
webhook_events: the outbox, each event written in the transaction of the change it describes.
webhook_deliveries: each event for each endpoint, with its attempts (the delivery log).

An endpoint's signing secret is sealed with AES-GCM (app/crypto.py) and shown once, when it
is made. After a rotation the previous secret signs too, until `previous_expires_at`.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ARRAY,
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Identity,
    Index,
    LargeBinary,
    String,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, CreatedAt, UpdatedAt, UuidPrimaryKey
from app.modes import mode_check, mode_column


class WebhookEndpoint(UuidPrimaryKey, CreatedAt, UpdatedAt, Base):
    __tablename__ = "webhook_endpoints"
    __table_args__ = (
        mode_check(),
        Index("ix_webhook_endpoints_tenant_id_mode_id", "tenant_id", "mode", "id"),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    mode: Mapped[str] = mode_column()
    url: Mapped[str] = mapped_column(String(2048))
    description: Mapped[str] = mapped_column(Text, default="", server_default="")
    # None: every event type, those added later included.
    event_types: Mapped[list[str] | None] = mapped_column(ARRAY(String(32)), nullable=True)
    enabled: Mapped[bool] = mapped_column(default=True, server_default=text("true"))
    secret_key_id: Mapped[str] = mapped_column(String(64))
    secret_ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    previous_key_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    previous_ciphertext: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    previous_expires_at: Mapped[datetime | None] = mapped_column(nullable=True)
    # The first failed attempt since the last success: failing for FAILING_LIMIT disables it.
    failing_since: Mapped[datetime | None] = mapped_column(nullable=True)
    # Why Herald disabled it (a 410, or failing too long); None when enabled or disabled by hand.
    disabled_reason: Mapped[str | None] = mapped_column(Text, nullable=True)


class WebhookEvent(Base):
    """An event for the tenant's endpoints, written in the transaction of the change it
    describes, so that a change committed always has its event; turned into deliveries to
    the matching endpoints, and deleted, by app/webhooks/fanout.py.

    Written only while the tenant has an endpoint of the mode that wants its type (the write
    checks in the same statement): a tenant with no endpoints costs nothing."""

    __tablename__ = "webhook_events"
    __table_args__ = (mode_check(),)

    # The order events were written in. A message's changes take its row's lock before their
    # events are written, so of two events of one message the later's number is drawn after
    # the earlier one committed.
    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(64))  # `webhook-id`: evt_<uuid7 hex>
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    mode: Mapped[str] = mode_column()
    type: Mapped[str] = mapped_column(String(32))
    # Events of one subject (a message, a recipient, a notification) reach an endpoint in order.
    ordering_key: Mapped[str] = mapped_column(String(64))
    data: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime]


class WebhookDelivery(UuidPrimaryKey, CreatedAt, UpdatedAt, Base):
    """One event for one endpoint, and its attempts so far: the endpoint's delivery log.

    `event_id` is the `webhook-id` header, the same on every attempt; `attempts` counts the
    requests made; a pending delivery is due at `next_attempt_at`."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        mode_check(),
        CheckConstraint("status IN ('pending', 'succeeded', 'failed')", name="status"),
        Index("ix_webhook_deliveries_endpoint_id_id", "endpoint_id", "id"),
        # The dashboard's delivery log of one status (failed ones, say), newest first.
        Index("ix_webhook_deliveries_endpoint_id_status_id", "endpoint_id", "status", "id"),
        # send_due: an earlier delivery of the same subject to the endpoint still pending.
        Index(
            "ix_webhook_deliveries_ordering",
            "endpoint_id",
            "ordering_key",
            "event_seq",
            postgresql_where=text("status = 'pending'"),
        ),
        Index(
            "ix_webhook_deliveries_due",
            "next_attempt_at",
            postgresql_where=text("status = 'pending'"),
        ),
        # Retention: finished deliveries past their time, oldest first.
        Index(
            "ix_webhook_deliveries_expired",
            "retain_until",
            postgresql_where=text("status <> 'pending'"),
        ),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    mode: Mapped[str] = mode_column()
    endpoint_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("webhook_endpoints.id", ondelete="CASCADE")
    )
    event_id: Mapped[str] = mapped_column(String(64))
    event_type: Mapped[str] = mapped_column(String(32))
    # Its event's ordering key and number (webhook_events.id): it waits while an earlier event
    # of the same key is pending for the endpoint. None for test events, which wait for none.
    ordering_key: Mapped[str | None] = mapped_column(String(64), nullable=True)
    event_seq: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(default=0, server_default=text("0"))
    next_attempt_at: Mapped[datetime | None] = mapped_column(nullable=True)
    last_status_code: Mapped[int | None] = mapped_column(nullable=True)
    last_latency_ms: Mapped[int | None] = mapped_column(nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Creation + the plan's log retention then; a delivery still pending is kept past it.
    retain_until: Mapped[datetime]
