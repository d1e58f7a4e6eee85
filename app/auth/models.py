"""api_keys, users and memberships; e-mail verifications and the tenants awaiting one."""

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
    last_sign_in_at: Mapped[datetime | None]
    # Dashboard sessions carry the generation they began in; raising it (sign out
    # everywhere, a new password) ends every session of an older one.
    session_generation: Mapped[int] = mapped_column(default=0, server_default="0")
    email_verified_at: Mapped[datetime | None]


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


class EmailVerification(CreatedAt, Base):
    """A link mailed to prove an address: only the token's SHA-256 is kept; single use."""

    __tablename__ = "email_verifications"

    token_hash: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    email: Mapped[str] = mapped_column(String(320))  # the address the link was sent to
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]


class UnverifiedTenant(CreatedAt, Base):
    """A tenant made by self-service sign-up whose owners have not verified an address yet:
    it may not use or create live keys. Operators' tenants never get a row."""

    __tablename__ = "unverified_tenants"

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )


INVITE_DELIVERIES = ("mail", "sandbox")


class MemberInvite(UuidPrimaryKey, CreatedAt, Base):
    """An invitation to join a tenant with a role (app/auth/members.py): only the token's
    SHA-256 is kept; the row goes when the invite is accepted, revoked or replaced."""

    __tablename__ = "member_invites"
    __table_args__ = (
        CheckConstraint(f"role IN {ROLES!r}", name="role"),
        CheckConstraint(f"delivery IN {INVITE_DELIVERIES!r}", name="delivery"),
        # One pending invite per address and tenant: inviting again replaces it. Also the
        # index of a tenant's list of invites.
        Index(
            "uq_member_invites_tenant_id_email_lower",
            "tenant_id",
            text("lower(email)"),
            unique=True,
        ),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    email: Mapped[str] = mapped_column(String(320))
    role: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    invited_by: Mapped[str] = mapped_column(String(200))  # the inviting member's actor
    # How the link reached the invitee: mailed (which proves the address), or shown to the
    # inviting owner from test mode's sandbox (which does not).
    delivery: Mapped[str] = mapped_column(String(8))
    expires_at: Mapped[datetime]


class PasswordReset(CreatedAt, Base):
    """A password-reset link mailed to a user: the token's SHA-256 only; single use."""

    __tablename__ = "password_resets"

    token_hash: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]
