"""The templates table (one row per immutable version) and the TemplateVersion value.

Rows are never updated except to soft-delete them; a save inserts the next version. The rest
of Herald works with `TemplateVersion`, a frozen copy that outlives the session it came from.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import CheckConstraint, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.channels import CHANNELS
from app.db import Base, CreatedAt, UuidPrimaryKey
from app.modes import mode_check, mode_column
from app.templates.sources import locale_candidates, normalise_locale


class Template(UuidPrimaryKey, CreatedAt, Base):
    __tablename__ = "templates"
    __table_args__ = (
        UniqueConstraint("tenant_id", "mode", "key", "version"),
        CheckConstraint("version >= 1", name="version"),
        Index("ix_templates_tenant_id_mode_id", "tenant_id", "mode", "id"),
        mode_check(),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    mode: Mapped[str] = mode_column()
    key: Mapped[str] = mapped_column(String(100))
    version: Mapped[int]
    name: Mapped[str] = mapped_column(String(200))
    category: Mapped[str | None] = mapped_column(String(100))
    default_locale: Mapped[str] = mapped_column(String(35), default="en", server_default="en")
    content: Mapped[dict[str, Any]] = mapped_column(JSONB)
    locales: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict, server_default="{}")
    created_by: Mapped[str] = mapped_column(String(200))
    deleted_at: Mapped[datetime | None]


class LocalizedContent(NamedTuple):
    """One channel's content after locale fallback, and where it came from."""

    locale: str  # the locale whose content this is ("fr", or the default locale)
    path: str  # where its sources live: "content" or "locales.fr"
    content: dict[str, Any]


@dataclass(frozen=True)
class TemplateVersion:
    """One version of a template, detached from the database."""

    id: uuid.UUID
    tenant_id: uuid.UUID
    key: str
    version: int
    name: str
    category: str | None
    default_locale: str
    content: dict[str, dict[str, Any]]
    locales: dict[str, dict[str, dict[str, Any]]]
    created_at: datetime
    created_by: str

    @classmethod
    def of(cls, row: Template) -> TemplateVersion:
        return cls(
            id=row.id,
            tenant_id=row.tenant_id,
            key=row.key,
            version=row.version,
            name=row.name,
            category=row.category,
            default_locale=row.default_locale,
            content=row.content,
            locales=row.locales,
            created_at=row.created_at,
            created_by=row.created_by,
        )

    @property
    def channels(self) -> list[str]:
        """The channels this template has content for, in Herald's channel order."""
        return [channel for channel in CHANNELS if channel in self.content]

    def content_for(self, channel: str, *locales: str | None) -> LocalizedContent | None:
        """The channel's content for the first of `locales` the template has, each tried
        before its language ("fr-CA", then "fr"); else the default content."""
        by_tag = {normalise_locale(tag): tag for tag in self.locales}
        for candidate in locale_candidates(*locales):
            tag = by_tag.get(candidate)
            if tag is not None and channel in self.locales[tag]:
                return LocalizedContent(tag, f"locales.{tag}", self.locales[tag][channel])
        if channel in self.content:
            return LocalizedContent(self.default_locale, "content", self.content[channel])
        return None
