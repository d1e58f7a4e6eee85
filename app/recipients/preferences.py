"""Categories of notifications, and each recipient's channel preferences per category.

Every tenant has, in each mode, the default categories `transactional`, `marketing` and
`security` (the last critical) without any row; a PUT stores a row of the caller's mode that
overrides the default. A preference row
switches one channel for one category, or for every category when category is '*'.
Nothing stored means enabled.
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
from app.channels import CHANNELS
from app.recipients.models import WAS_INSERTED, Category, Preference
from app.recipients.validation import RecipientInvalid, check_category_key

ALL_CATEGORIES = "*"
MAX_CATEGORIES_PER_UPDATE = 100
MAX_DESCRIPTION = 500


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
    check_category_key(key)
    if not name.strip() or len(name) > 100:
        raise RecipientInvalid("name", "1 to 100 characters are required")
    if len(description) > MAX_DESCRIPTION:
        raise RecipientInvalid("description", f"at most {MAX_DESCRIPTION} characters")
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


@dataclass(frozen=True)
class PreferenceMap:
    channels: dict[str, bool]  # every channel, for every category
    categories: dict[str, dict[str, bool]]  # only what is stored; absent means enabled


async def get_preferences(
    session: AsyncSession, *, tenant_id: uuid.UUID, recipient_id: uuid.UUID
) -> PreferenceMap:
    rows = await session.scalars(
        select(Preference)
        .where(Preference.tenant_id == tenant_id, Preference.recipient_id == recipient_id)
        .execution_options(populate_existing=True)
    )
    channels: dict[str, bool] = dict.fromkeys(CHANNELS, True)
    categories: dict[str, dict[str, bool]] = {}
    for row in rows:
        if row.category == ALL_CATEGORIES:
            channels[row.channel] = row.enabled
        else:
            categories.setdefault(row.category, {})[row.channel] = row.enabled
    return PreferenceMap(
        channels=channels,
        categories={key: categories[key] for key in sorted(categories)},
    )


def _check_channels(switches: dict[str, bool], field: str) -> None:
    for channel, enabled in switches.items():
        if channel not in CHANNELS:
            raise RecipientInvalid(
                f"{field}.{channel}", f"unknown channel; one of {', '.join(CHANNELS)}"
            )
        if not isinstance(enabled, bool):
            raise RecipientInvalid(f"{field}.{channel}", "true or false is required")


def preference_rows(
    channels: dict[str, bool], categories: dict[str, dict[str, bool]]
) -> list[tuple[str, str, bool]]:
    """(category, channel, enabled) for every switch given; RecipientInvalid names a bad one."""
    if len(categories) > MAX_CATEGORIES_PER_UPDATE:
        raise RecipientInvalid(
            "categories", f"at most {MAX_CATEGORIES_PER_UPDATE} categories per update"
        )
    _check_channels(channels, "channels")
    rows = [(ALL_CATEGORIES, channel, enabled) for channel, enabled in channels.items()]
    for key, switches in categories.items():
        check_category_key(key, field=f"categories.{key}")
        _check_channels(switches, f"categories.{key}")
        rows += [(key, channel, enabled) for channel, enabled in switches.items()]
    return rows


async def set_preferences(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    recipient_id: uuid.UUID,
    channels: dict[str, bool],
    categories: dict[str, dict[str, bool]],
    actor: str,
) -> PreferenceMap:
    """Store the switches given (one statement), leave the others; return the whole map."""
    rows = preference_rows(channels, categories)
    if rows:
        statement = pg_insert(Preference).values(
            [
                {
                    "tenant_id": tenant_id,
                    "recipient_id": recipient_id,
                    "category": category,
                    "channel": channel,
                    "enabled": enabled,
                }
                for category, channel, enabled in rows
            ]
        )
        await session.execute(
            statement.on_conflict_do_update(
                index_elements=[Preference.recipient_id, Preference.category, Preference.channel],
                set_={"enabled": statement.excluded.enabled, "updated_at": func.now()},
            )
        )
        await audit.append(
            session,
            tenant_id=tenant_id,
            actor=actor,
            action="recipient.preferences_updated",
            target=str(recipient_id),
            details={"switches": len(rows)},
        )
    return await get_preferences(session, tenant_id=tenant_id, recipient_id=recipient_id)
