"""sso_configs: one OpenID Connect provider per tenant; sso_domains: the e-mail domains whose
people it signs in, each domain claimed by one tenant at most (it picks the provider on the
sign-in page, so two tenants cannot share it)."""

from __future__ import annotations

import uuid

from sqlalchemy import CheckConstraint, ForeignKey, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, CreatedAt, UpdatedAt

# Owners are made by hand, never by a sign-in.
JOIN_ROLES = ("viewer", "developer", "admin")


class SsoConfig(CreatedAt, UpdatedAt, Base):
    __tablename__ = "sso_configs"
    __table_args__ = (CheckConstraint(f"default_role IN {JOIN_ROLES!r}", name="default_role"),)

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    issuer: Mapped[str] = mapped_column(String(500))
    client_id: Mapped[str] = mapped_column(String(255))
    # The client secret, sealed with AES-GCM (app/crypto.py) under associated data naming
    # the tenant; never shown again once saved.
    secret_ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    key_id: Mapped[str] = mapped_column(String(64))
    # Members who are not owners may not sign in with a password (owners keep it: the way
    # back in when the provider is down or misconfigured).
    require_sso: Mapped[bool] = mapped_column(default=False, server_default="false")
    # The role of a person the provider vouches for who is not a member yet.
    default_role: Mapped[str] = mapped_column(String(16), default="viewer", server_default="viewer")
    updated_by: Mapped[str] = mapped_column(String(200))


class SsoDomain(CreatedAt, Base):
    __tablename__ = "sso_domains"

    domain: Mapped[str] = mapped_column(String(253), primary_key=True)  # lower case
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("sso_configs.tenant_id", ondelete="CASCADE"), index=True
    )
