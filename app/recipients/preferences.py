"""Each recipient's channel preferences per category (app/categories/).

A preference row switches one channel for one category, or for every category when
category is '*'. Nothing stored means enabled.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit import service as audit
from app.channels import CHANNELS
from app.recipients.models import Preference
from app.recipients.validation import RecipientInvalid, check_category_key

ALL_CATEGORIES = "*"
MAX_CATEGORIES_PER_UPDATE = 100


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
