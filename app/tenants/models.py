"""The tenants table."""

from __future__ import annotations

from typing import Any

from sqlalchemy import CheckConstraint, String
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, CreatedAt, UuidPrimaryKey
from app.usage import overflow


class Tenant(UuidPrimaryKey, CreatedAt, Base):
    __tablename__ = "tenants"
    __table_args__ = (CheckConstraint(overflow.CHECK, name="on_quota_exceeded"),)

    name: Mapped[str] = mapped_column(String(200))
    # A plan of the operator's plans file (app/tenants/plans.py): not a database constraint,
    # since the operator adds plans without a migration.
    plan: Mapped[str] = mapped_column(String(32), default="free", server_default="free")
    # {channel: "pause" | "drop_noncritical"}; a channel absent from it flows normally.
    kill_switches: Mapped[dict[str, str]] = mapped_column(JSONB, default=dict, server_default="{}")
    # {"max_attempts": n, "window_hours": h}; absent members take the defaults.
    retry_policy: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict, server_default="{}")
    # The locale of recipients who have none, and the fallback before a template's own content.
    default_locale: Mapped[str | None] = mapped_column(String(35))
    # A broadcast larger than a blocking plan's quota left: `send_partial` (up to the quota)
    # or `refuse` (whole); app/usage/overflow.py.
    on_quota_exceeded: Mapped[str] = mapped_column(
        String(16), default=overflow.DEFAULT, server_default=overflow.DEFAULT
    )
