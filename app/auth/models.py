"""api_keys, users and memberships."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import CheckConstraint, Float, ForeignKey, Index, LargeBinary, String, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, CreatedAt, UuidPrimaryKey
from app.modes import MODES

KEY_MODES = MODES
SCOPES = ("send", "read", "manage")
ROLES = ("owner", "admin", "developer", "viewer")


class ApiKey(UuidPrimaryKey, CreatedAt, Base):
    __tablename__ = "api_keys"
    __table_args__ = (
        CheckConstraint(f"mode IN {KEY_MODES!r}", name="mode"),
        Index("ix_api_keys_tenant_id_mode_id", "tenant_id", "mode", "id"),
        CheckConstraint(
            "(rate_per_second IS NULL) = (burst IS NULL) AND rate_per_second > 0 AND burst >= 1",
            name="rate",
        ),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(32))
    key_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    mode: Mapped[str] = mapped_column(String(8))
    scopes: Mapped[list[str]] = mapped_column(ARRAY(String(16)))
    created_by: Mapped[str] = mapped_column(String(200))
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    # A limit of the key's own, below its tenant's (NULL: the tenant's limit only).
    rate_per_second: Mapped[float | None] = mapped_column(Float)
    burst: Mapped[int | None]


class User(UuidPrimaryKey, CreatedAt, Base):
    __tablename__ = "users"
    __table_args__ = (Index("uq_users_email_lower", text("lower(email)"), unique=True),)

    email: Mapped[str] = mapped_column(String(320))
    name: Mapped[str] = mapped_column(String(200))
    password_hash: Mapped[str] = mapped_column(String(200))
    failed_sign_ins: Mapped[int] = mapped_column(default=0, server_default="0")
    locked_until: Mapped[datetime | None]
    last_sign_in_at: Mapped[datetime | None]


class Membership(CreatedAt, Base):
    __tablename__ = "memberships"
    __table_args__ = (CheckConstraint(f"role IN {ROLES!r}", name="role"),)

    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    role: Mapped[str] = mapped_column(String(16))
