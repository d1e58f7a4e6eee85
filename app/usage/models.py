"""The usage tables: counts flushed from Redis, the flushes already applied, and the quota
warnings given to tenants' owners."""

from __future__ import annotations

import uuid
from datetime import date, datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Date,
    DateTime,
    ForeignKey,
    Index,
    SmallInteger,
    String,
    func,
    text,
)
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


class UsageWarning(Base):
    """A threshold of a channel group's monthly quota that a tenant reached, recorded once
    (app/usage/warnings.py): its owners are mailed about it, and `mailed_at` says they were."""

    __tablename__ = "usage_warnings"
    __table_args__ = (
        CheckConstraint("threshold IN (80, 100)", name="threshold"),
        # The mail round's search: warnings of a period not mailed yet (few, kept small).
        Index(
            "ix_usage_warnings_unmailed",
            "period",
            postgresql_where=text("mailed_at IS NULL"),
        ),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    period: Mapped[date] = mapped_column(Date, primary_key=True)  # the month's first day
    channel: Mapped[str] = mapped_column(String(16), primary_key=True)
    threshold: Mapped[int] = mapped_column(SmallInteger, primary_key=True)  # per cent
    used: Mapped[int] = mapped_column(BigInteger)  # the count when the threshold was found
    quota: Mapped[int] = mapped_column(BigInteger)  # the plan's quota it was judged against
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    mailed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
