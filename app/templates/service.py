"""Templates of a tenant: saving immutable versions, reading, listing and deleting them.

Templates belong to a mode (app/modes.py): test and live each have their own versions of a
key, so a test key cannot change what live sends say. A save inserts the next version under
a per-(tenant, mode, key) advisory lock, so concurrent saves get consecutive versions
instead of colliding on UNIQUE(tenant_id, mode, key, version). A delete
soft-deletes every version; reads and sends no longer see them, and a later save continues
the numbering (versions are never reused).
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from sqlalchemy import exists, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from app.audit import service as audit
from app.auth import roles
from app.categories.service import get_category
from app.channels import CHANNELS
from app.pagination import Page, keyset_page
from app.templates.models import Template, TemplateVersion
from app.templates.validation import (
    CheckedTemplate,
    FieldError,
    InvalidTemplate,
    SourceCheck,
    check_template,
    is_key,
    sources_of,
)


async def _lock(session: AsyncSession, tenant_id: uuid.UUID, mode: str, key: str) -> None:
    """Serialise saves and deletes of one template until the transaction ends."""
    # Taken before audit.append's per-tenant lock, always in that order: no deadlock.
    await session.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
        {"key": f"template:{tenant_id}:{mode}:{key}"},
    )


async def save_template(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    mode: str,
    key: str,
    content: dict[str, Any],
    locales: dict[str, Any] | None = None,
    name: str | None = None,
    category: str | None = None,
    default_locale: str = "en",
    actor: str,
    compiles: SourceCheck,
    role: str | None = None,
) -> TemplateVersion:
    """Store the next version of `key` (1 if new); raises InvalidTemplate naming bad fields.

    `compiles` compiles the sources (the render pool: app/templates/renderer.py); it runs
    before the session's first query, so no connection is held while it does. A member's
    `role` must be one that manages templates (RoleNotAllowed); None is an API key's.
    """
    roles.require(role, "manage_templates")
    checked: CheckedTemplate | None = None
    try:
        checked = check_template(
            key=key,
            name=name,
            category=category,
            default_locale=default_locale,
            content=content,
            locales=locales or {},
        )
    except InvalidTemplate as invalid:
        errors = invalid.errors
    else:
        errors = await compiles(sources_of(checked))
    unknown = await _unknown_category(session, tenant_id, mode, category)
    if checked is None or errors or unknown:
        raise InvalidTemplate(errors + unknown)
    await _lock(session, tenant_id, mode, key)
    latest = await session.scalar(
        select(func.max(Template.version)).where(
            Template.tenant_id == tenant_id, Template.mode == mode, Template.key == key
        )
    )
    row = Template(
        tenant_id=tenant_id,
        mode=mode,
        key=key,
        version=(latest or 0) + 1,
        name=checked.name,
        category=checked.category,
        default_locale=checked.default_locale,
        content=checked.content,
        locales=checked.locales,
        created_by=actor,
    )
    session.add(row)
    await session.flush()
    saved = TemplateVersion.of(row)
    await audit.append(
        session,
        tenant_id=tenant_id,
        actor=actor,
        action="template.saved",
        target=key,
        details={
            "id": str(row.id),
            "mode": mode,
            "version": row.version,
            "channels": list(saved.channels),
            "locales": sorted(checked.locales),
        },
    )
    return saved


async def _unknown_category(
    session: AsyncSession, tenant_id: uuid.UUID, mode: str, category: str | None
) -> list[FieldError]:
    """The error for a category the tenant does not have: every send would be refused."""
    if category is None or not is_key(category):  # a malformed key is check_template's
        return []
    if await get_category(session, tenant_id=tenant_id, mode=mode, key=category) is not None:
        return []
    message = (
        f"no category {category!r} in {mode} mode; create it with PUT /v1/categories/{category}"
    )
    return [{"field": "category", "message": message}]


async def get_template(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    mode: str,
    key: str,
    version: int | None = None,
) -> TemplateVersion | None:
    """The latest (or the given) version of `key`; None when missing or deleted."""
    query = select(Template).where(
        Template.tenant_id == tenant_id,
        Template.mode == mode,
        Template.key == key,
        Template.deleted_at.is_(None),
    )
    if version is None:
        query = query.order_by(Template.version.desc()).limit(1)
    else:
        query = query.where(Template.version == version)
    row = await session.scalar(query)
    return None if row is None else TemplateVersion.of(row)


@dataclass(frozen=True)
class TemplateSummary:
    """What accepting a notification needs of a template: no content, no JSON decoding."""

    key: str
    version: int
    category: str | None
    channels: list[str]


TemplateKey = tuple[uuid.UUID, str, str]  # (tenant, mode, key)

# The newest live version of each asked (tenant, mode, key), in one statement for a batch.
_LATEST = text(
    """
    SELECT w.tenant_id, w.mode, w.key, t.version, t.category, t.channels
      FROM unnest(CAST(:tenant_ids AS uuid[]), CAST(:modes AS text[]), CAST(:keys AS text[]))
           AS w(tenant_id, mode, key)
      JOIN LATERAL (
            SELECT version, category, ARRAY(SELECT jsonb_object_keys(content)) AS channels
              FROM templates
             WHERE tenant_id = w.tenant_id AND mode = w.mode AND key = w.key
               AND deleted_at IS NULL
             ORDER BY version DESC
             LIMIT 1) AS t ON true
    """
)


async def latest_summaries(
    session: AsyncSession, wanted: Collection[TemplateKey]
) -> dict[TemplateKey, TemplateSummary]:
    """The newest live version's number, category and channels of each template asked for
    (absent: no such template), in one light query for a whole intake batch."""
    if not wanted:
        return {}
    keys = list(wanted)
    rows = await session.execute(
        _LATEST,
        {
            "tenant_ids": [k[0] for k in keys],
            "modes": [k[1] for k in keys],
            "keys": [k[2] for k in keys],
        },
    )
    found: dict[TemplateKey, TemplateSummary] = {}
    for row in rows:
        present = set(row.channels)
        channels: list[str] = [c for c in CHANNELS if c in present]
        found[(row.tenant_id, row.mode, row.key)] = TemplateSummary(
            row.key, row.version, row.category, channels
        )
    return found


async def list_templates(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    mode: str,
    limit: int = 100,
    cursor: uuid.UUID | None,
) -> Page[TemplateVersion]:
    """The latest version of each template not deleted, most recently saved first."""
    newer = aliased(Template)
    query = select(Template).where(
        Template.tenant_id == tenant_id,
        Template.mode == mode,
        Template.deleted_at.is_(None),
        ~exists().where(
            newer.tenant_id == Template.tenant_id,
            newer.mode == Template.mode,
            newer.key == Template.key,
            newer.version > Template.version,
            newer.deleted_at.is_(None),
        ),
    )
    page = await keyset_page(session, query, Template.id, limit=limit, cursor=cursor)
    return Page([TemplateVersion.of(row) for row in page.items], page.has_more, page.next_cursor)


async def list_versions(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    mode: str,
    key: str,
    limit: int = 100,
    before: int | None = None,
) -> Page[TemplateVersion]:
    """Versions of `key` not deleted, newest first; the cursor is a version number."""
    query = select(Template).where(
        Template.tenant_id == tenant_id,
        Template.mode == mode,
        Template.key == key,
        Template.deleted_at.is_(None),
    )
    if before is not None:
        query = query.where(Template.version < before)
    rows = list(
        (await session.scalars(query.order_by(Template.version.desc()).limit(limit + 1))).all()
    )
    has_more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = str(rows[-1].version) if has_more else None
    return Page([TemplateVersion.of(row) for row in rows], has_more, next_cursor)


async def delete_template(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    mode: str,
    key: str,
    actor: str,
    role: str | None = None,
) -> int:
    """Soft-delete every version of `key`; returns how many (0: there was nothing to delete).
    A member's `role` must be one that manages templates (RoleNotAllowed)."""
    roles.require(role, "manage_templates")
    await _lock(session, tenant_id, mode, key)
    versions = list(
        (
            await session.scalars(
                update(Template)
                .where(
                    Template.tenant_id == tenant_id,
                    Template.mode == mode,
                    Template.key == key,
                    Template.deleted_at.is_(None),
                )
                .values(deleted_at=func.now())
                .returning(Template.version)
            )
        ).all()
    )
    if versions:
        await audit.append(
            session,
            tenant_id=tenant_id,
            actor=actor,
            action="template.deleted",
            target=key,
            details={"versions": len(versions), "latest_version": max(versions), "mode": mode},
        )
    return len(versions)
