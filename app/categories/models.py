"""categories: a tenant's categories of notifications per mode (app/modes.py).

A row overrides the built-in category of its key, or adds one (app/categories/service.py).
"""

from __future__ import annotations

import uuid

from sqlalchemy import Boolean, ForeignKey, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, CreatedAt, UpdatedAt
from app.modes import mode_check


class Category(CreatedAt, UpdatedAt, Base):
    __tablename__ = "categories"
    __table_args__ = (mode_check(),)

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    mode: Mapped[str] = mapped_column(String(8), primary_key=True)
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    description: Mapped[str] = mapped_column(Text, default="", server_default="")
    critical: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
