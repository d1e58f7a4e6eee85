"""Each recipient's channel switches: per category (app/categories/) and per topic.

A preference row switches one channel for one category, or for every category when
category is '*'. A topic preference row switches one channel for the notifications sent to
one topic; it names the topic by key only, so it may be set before the recipient joins the
topic or before the topic exists. Nothing stored means enabled.

A PUT stores the switches it gives and keeps the others: one INSERT … ON CONFLICT per table,
its rows in key order, so that two writers of the same recipient's switches take the row
locks in the same order and never deadlock.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit import service as audit
from app.channels import CHANNELS
from app.recipients.models import Preference, TopicPreference
from app.recipients.validation import RecipientInvalid, check_category_key, check_topic_key

ALL_CATEGORIES = "*"
MAX_CATEGORIES_PER_UPDATE = 100
MAX_TOPICS_PER_UPDATE = 100

Switches = dict[str, dict[str, bool]]  # key (category or topic) → channel → enabled
Row = tuple[str, str, bool]  # (key, channel, enabled)


@dataclass(frozen=True)
class PreferenceMap:
    channels: dict[str, bool]  # every channel, for every category
    categories: Switches  # only what is stored; absent means enabled
    topics: Switches  # only what is stored; absent means enabled


def _nested(rows: list[Row]) -> Switches:
    nested: Switches = {}
    for key, channel, enabled in rows:
        nested.setdefault(key, {})[channel] = enabled
    return {key: nested[key] for key in sorted(nested)}


async def get_preferences(
    session: AsyncSession, *, tenant_id: uuid.UUID, recipient_id: uuid.UUID
) -> PreferenceMap:
    rows = await session.execute(
        select(Preference.category, Preference.channel, Preference.enabled).where(
            Preference.tenant_id == tenant_id, Preference.recipient_id == recipient_id
        )
    )
    channels: dict[str, bool] = dict.fromkeys(CHANNELS, True)
    categories: list[Row] = []
    for category, channel, enabled in rows:
        if category == ALL_CATEGORIES:
            channels[channel] = enabled
        else:
            categories.append((category, channel, enabled))
    topics = await session.execute(
        select(TopicPreference.topic_key, TopicPreference.channel, TopicPreference.enabled).where(
            TopicPreference.tenant_id == tenant_id, TopicPreference.recipient_id == recipient_id
        )
    )
    return PreferenceMap(
        channels=channels,
        categories=_nested(categories),
        topics=_nested([(key, channel, enabled) for key, channel, enabled in topics]),
    )


def _check_channels(switches: dict[str, bool], field: str) -> None:
    for channel, enabled in switches.items():
        if channel not in CHANNELS:
            raise RecipientInvalid(
                f"{field}.{channel}", f"unknown channel; one of {', '.join(CHANNELS)}"
            )
        if not isinstance(enabled, bool):
            raise RecipientInvalid(f"{field}.{channel}", "true or false is required")


def preference_rows(channels: dict[str, bool], categories: Switches) -> list[Row]:
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


def topic_preference_rows(topics: Switches) -> list[Row]:
    """(topic key, channel, enabled) for every switch given; RecipientInvalid names a bad one.

    Keys follow the rules of topic keys, whether or not such a topic exists.
    """
    if len(topics) > MAX_TOPICS_PER_UPDATE:
        raise RecipientInvalid("topics", f"at most {MAX_TOPICS_PER_UPDATE} topics per update")
    rows: list[Row] = []
    for key, switches in topics.items():
        check_topic_key(key, field=f"topics.{key}")
        _check_channels(switches, f"topics.{key}")
        rows += [(key, channel, enabled) for channel, enabled in switches.items()]
    return rows


async def _store(
    session: AsyncSession,
    table: type[Preference] | type[TopicPreference],
    key: str,
    *,
    tenant_id: uuid.UUID,
    recipient_id: uuid.UUID,
    rows: list[Row],
) -> None:
    """Upsert the rows into `table`, whose column `key` holds their first member."""
    if not rows:
        return
    statement = pg_insert(table).values(
        [
            {
                "tenant_id": tenant_id,
                "recipient_id": recipient_id,
                key: name,
                "channel": channel,
                "enabled": enabled,
            }
            for name, channel, enabled in sorted(rows)  # lock order: see the module docstring
        ]
    )
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=["recipient_id", key, "channel"],
            set_={"enabled": statement.excluded.enabled, "updated_at": func.now()},
        )
    )


async def set_preferences(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    recipient_id: uuid.UUID,
    channels: dict[str, bool],
    categories: Switches,
    topics: Switches | None = None,
    actor: str,
) -> PreferenceMap:
    """Store the switches given, leave the others; return the whole map.

    Everything is checked before anything is written: a refused switch stores none.
    """
    rows = preference_rows(channels, categories)
    topic_rows = topic_preference_rows(topics or {})
    scope = {"tenant_id": tenant_id, "recipient_id": recipient_id}
    await _store(session, Preference, "category", rows=rows, **scope)
    await _store(session, TopicPreference, "topic_key", rows=topic_rows, **scope)
    if rows or topic_rows:
        await audit.append(
            session,
            tenant_id=tenant_id,
            actor=actor,
            action="recipient.preferences_updated",
            target=str(recipient_id),
            details={"switches": len(rows), "topic_switches": len(topic_rows)},
        )
    return await get_preferences(session, tenant_id=tenant_id, recipient_id=recipient_id)
