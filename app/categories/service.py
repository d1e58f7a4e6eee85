"""A tenant's categories of notifications: the built-in ones, and the rows that override or
add to them.

Every tenant has, in each mode, the default categories `transactional`, `marketing` and
`security` (the last critical) without any row; a PUT stores a row of the caller's mode that
overrides the default. What being critical changes for a send is app/categories/rules.py's.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit import service as audit
from app.categories.keys import KEY_RULE, is_category_key
from app.categories.models import Category
from app.db import WAS_INSERTED

MAX_NAME = 100
MAX_DESCRIPTION = 500


class CategoryInvalid(ValueError):
    """A category is refused; `field` names what is wrong, as the API does."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True)
class CategoryView:
    """What the dispatcher needs of a category: critical ones ignore opt-outs."""

    key: str
    name: str
    critical: bool


@dataclass(frozen=True)
class CategoryRecord:
    key: str
    name: str
    description: str
    critical: bool
    default: bool  # a built-in category no PUT has overridden
    created_at: datetime | None
    updated_at: datetime | None

    @property
    def view(self) -> CategoryView:
        return CategoryView(key=self.key, name=self.name, critical=self.critical)


DEFAULT_CATEGORIES = {
    c.key: c
    for c in (
        CategoryRecord(
            "transactional",
            "Transactional",
            "Receipts, orders, account changes.",
            False,
            True,
            None,
            None,
        ),
        CategoryRecord(
            "marketing", "Marketing", "Newsletters and promotions.", False, True, None, None
        ),
        CategoryRecord(
            "security",
            "Security",
            "One-time codes, password resets, sign-in alerts; sent despite opt-outs.",
            True,
            True,
            None,
            None,
        ),
    )
}


def _record(row: Category) -> CategoryRecord:
    return CategoryRecord(
        row.key, row.name, row.description, row.critical, False, row.created_at, row.updated_at
    )


async def list_categories(
    session: AsyncSession, *, tenant_id: uuid.UUID, mode: str
) -> list[CategoryRecord]:
    """The tenant's categories of a mode by key, defaults included unless overridden."""
    rows = await session.scalars(
        select(Category).where(Category.tenant_id == tenant_id, Category.mode == mode)
    )
    records = dict(DEFAULT_CATEGORIES) | {row.key: _record(row) for row in rows}
    return [records[key] for key in sorted(records)]


async def get_category(
    session: AsyncSession, *, tenant_id: uuid.UUID, mode: str, key: str
) -> CategoryView | None:
    row = await session.scalar(
        select(Category).where(
            Category.tenant_id == tenant_id, Category.mode == mode, Category.key == key
        )
    )
    if row is not None:
        return _record(row).view
    default = DEFAULT_CATEGORIES.get(key)
    return default.view if default else None


CategoryKey = tuple[uuid.UUID, str, str]  # (tenant, mode, key)

_STORED_CRITICALITY = text(
    """
    SELECT c.tenant_id, c.mode, c.key, c.critical
      FROM categories AS c
      JOIN unnest(CAST(:tenant_ids AS uuid[]), CAST(:modes AS text[]), CAST(:keys AS text[]))
           AS w(tenant_id, mode, key)
        ON c.tenant_id = w.tenant_id AND c.mode = w.mode AND c.key = w.key
    """
)


async def criticality(
    session: AsyncSession, wanted: Collection[CategoryKey]
) -> dict[CategoryKey, bool]:
    """Whether each category asked for is critical, in one query for a whole intake batch;
    absent when the category exists neither as a row nor as a default (as get_category)."""
    if not wanted:
        return {}
    keys = list(wanted)
    rows = await session.execute(
        _STORED_CRITICALITY,
        {
            "tenant_ids": [k[0] for k in keys],
            "modes": [k[1] for k in keys],
            "keys": [k[2] for k in keys],
        },
    )
    stored = {(row[0], row[1], row[2]): bool(row[3]) for row in rows}
    found: dict[CategoryKey, bool] = {}
    for key in keys:
        if key in stored:
            found[key] = stored[key]
        elif key[2] in DEFAULT_CATEGORIES:
            found[key] = DEFAULT_CATEGORIES[key[2]].critical
    return found


async def put_category(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    mode: str,
    key: str,
    name: str,
    description: str,
    critical: bool,
    actor: str,
) -> tuple[CategoryRecord, bool]:
    """Create or replace a category; True when the key did not exist, even as a default."""
    if not is_category_key(key):
        raise CategoryInvalid("key", KEY_RULE)
    if not name.strip() or len(name) > MAX_NAME:
        raise CategoryInvalid("name", f"1 to {MAX_NAME} characters are required")
    if len(description) > MAX_DESCRIPTION:
        raise CategoryInvalid("description", f"at most {MAX_DESCRIPTION} characters")
    values = {"name": name, "description": description, "critical": critical}
    upsert = (
        pg_insert(Category)
        .values(tenant_id=tenant_id, mode=mode, key=key, created_at=func.now(), **values)
        .on_conflict_do_update(
            index_elements=[Category.tenant_id, Category.mode, Category.key],
            set_={**values, "updated_at": func.now()},
        )
        .returning(Category, WAS_INSERTED)
    )
    row, inserted = (
        await session.execute(upsert, execution_options={"populate_existing": True})
    ).one()
    created = bool(inserted) and key not in DEFAULT_CATEGORIES
    await audit.append(
        session,
        tenant_id=tenant_id,
        actor=actor,
        action="category.created" if created else "category.updated",
        target=key,
        details={"critical": critical, "mode": mode},
    )
    return _record(row), created
