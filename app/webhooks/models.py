"""webhook_endpoints: where a tenant receives Herald's events, per mode; secrets sealed.

An endpoint's signing secret is sealed with AES-GCM (app/crypto.py) and shown once, when it
is made. After a rotation the previous secret signs too, until `previous_expires_at`.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ARRAY, ForeignKey, Index, LargeBinary, String, Text, text
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
