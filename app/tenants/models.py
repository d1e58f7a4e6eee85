"""The tenants table."""

from __future__ import annotations

from sqlalchemy import CheckConstraint, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, CreatedAt, UuidPrimaryKey

PLANS = ("free", "starter", "growth", "enterprise")


class Tenant(UuidPrimaryKey, CreatedAt, Base):
    __tablename__ = "tenants"
    __table_args__ = (CheckConstraint(f"plan IN {PLANS!r}", name="plan"),)

    name: Mapped[str] = mapped_column(String(200))
    plan: Mapped[str] = mapped_column(String(32), default="free", server_default="free")
