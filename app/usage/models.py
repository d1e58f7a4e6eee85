"""The usage tables: counts flushed from Redis, and the flushes already applied."""

from __future__ import annotations

import uuid
from datetime import date, datetime

from sqlalchemy import BigInteger, Date, DateTime, ForeignKey, String, func
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base


class UsageCount(Base):
    """Live messages queued for sending in a calendar month (UTC), per tenant and channel."""

    __tablename__ = "usage_counts"

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    period: Mapped[date] = mapped_column(Date, primary_key=True)  # the month's first day
    channel: Mapped[str] = mapped_column(String(16), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class UsageFlush(Base):
    """A flush of Redis deltas applied to usage_counts: its id makes the apply exactly-once."""

    __tablename__ = "usage_flushes"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    flushed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
