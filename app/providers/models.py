"""provider_configs: a tenant's provider accounts, credentials sealed with AES-GCM."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import CheckConstraint, Float, ForeignKey, Index, LargeBinary, String, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.channels import CHANNELS
from app.db import Base, CreatedAt, UuidPrimaryKey, utcnow
from app.providers.credentials import PROVIDERS


class ProviderConfig(UuidPrimaryKey, CreatedAt, Base):
    __tablename__ = "provider_configs"
    __table_args__ = (
        CheckConstraint(f"channel IN {CHANNELS!r}", name="channel"),
        CheckConstraint(f"provider IN {PROVIDERS!r}", name="provider"),
        CheckConstraint("rate_per_second > 0 AND burst >= 1", name="rate"),
        Index("ix_provider_configs_tenant_id_id", "tenant_id", "id"),
        # routes_for: a tenant's enabled configs of one channel, by priority.
        Index("ix_provider_configs_tenant_id_channel_priority", "tenant_id", "channel", "priority"),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    channel: Mapped[str] = mapped_column(String(16))
    provider: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(100))
    priority: Mapped[int]
    rate_per_second: Mapped[float] = mapped_column(Float)
    burst: Mapped[int]
    credentials_ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    key_id: Mapped[str] = mapped_column(String(64))
    fingerprint: Mapped[str] = mapped_column(String(16))
    options: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    enabled: Mapped[bool] = mapped_column(default=True, server_default="true")
    updated_at: Mapped[datetime] = mapped_column(
        default=utcnow, onupdate=utcnow, server_default=func.now()
    )
