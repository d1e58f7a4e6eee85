"""Topics: named groups of a tenant's recipients of one mode, and who belongs to them.

What this module guarantees:
- every function takes the tenant and the mode and filters on both;
- members are existing recipients that are not erased; a change never creates one;
- a change of members costs the same few statements for one id or 10,000: the external ids
  are resolved in one query (`unnest` of the array, each id a probe of the recipients'
  unique (tenant_id, mode, external_id) index), written in one INSERT … ON CONFLICT DO
  NOTHING or one DELETE, and `member_count` moves by the rows those statements returned,
  as a relative update in the same statement, so concurrent changes add up;
- an erasure under way is waited for, and its outcome seen: the recipients read for an
  addition are key-share locked (the erasure takes them FOR UPDATE), so an erased
  recipient never becomes a member.

Locks are taken in one order (topic, then recipients by external id, then memberships by
recipient id, then the topic's count), so concurrent changes of overlapping sets wait for
each other but never deadlock.
Creating, replacing and deleting a topic is audited; a change of members is audited with its
counts only, never the ids.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import TextClause, delete, func, select, text, tuple_
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit import service as audit
from app.db import WAS_INSERTED
from app.pagination import Page
from app.recipients.models import Recipient, Topic, TopicMember
from app.recipients.validation import (
    MAX_TOPIC_CHANGE,
    RecipientInvalid,
    check_topic_key,
    normalise_external_id,
)

MAX_NAME = 100
MAX_DESCRIPTION = 500
MAX_REPORTED_ERRORS = 100


@dataclass(frozen=True)
class MembersChange:
    """The outcome of adding or removing members; `changed` counts rows written."""

    changed: int
    unchanged: int  # already members (added) or not members (removed)
    not_found: list[str]  # no recipient of this tenant and mode, or erased
    member_count: int


@dataclass(frozen=True)
class Member:
    recipient_id: uuid.UUID
    external_id: str
    added_at: datetime


def check_external_ids(external_ids: Sequence[str]) -> list[str]:
    """The ids once each, in the order given; RecipientInvalid names `recipients[i]`."""
    if not 1 <= len(external_ids) <= MAX_TOPIC_CHANGE:
        raise RecipientInvalid(
            "recipients",
            f"1 to {MAX_TOPIC_CHANGE:,} external ids at once (got {len(external_ids):,})",
        )
    errors: list[RecipientInvalid] = []
    for index, external_id in enumerate(external_ids):
        try:
            normalise_external_id(external_id)
        except RecipientInvalid as invalid:
            errors.append(RecipientInvalid(f"recipients[{index}]", invalid.message))
    if errors:
        first = errors[0]
        first.errors = errors[:MAX_REPORTED_ERRORS]
        raise first
    return list(dict.fromkeys(external_ids))


async def put_topic(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    mode: str,
    key: str,
    name: str | None,
    description: str,
    actor: str,
) -> tuple[Topic, bool]:
    """Create or replace a topic's name and description (its members stay); True if new."""
    check_topic_key(key)
    name = key if name is None else name
    if not 1 <= len(name) <= MAX_NAME:
        raise RecipientInvalid("name", f"1 to {MAX_NAME} characters are required")
    if len(description) > MAX_DESCRIPTION:
        raise RecipientInvalid("description", f"at most {MAX_DESCRIPTION} characters")
    values = {"name": name, "description": description}
    upsert = (
        pg_insert(Topic)
        .values(
            tenant_id=tenant_id,
            mode=mode,
            key=key,
            created_at=func.now(),
            updated_at=func.now(),
            **values,
        )
        # Key columns are not set: the row lock is FOR NO KEY UPDATE, which does not wait
        # for the key-share locks of member changes under way.
        .on_conflict_do_update(
            index_elements=[Topic.tenant_id, Topic.mode, Topic.key],
            set_={**values, "updated_at": func.now()},
        )
        .returning(Topic, WAS_INSERTED)
    )
    topic, inserted = (
        await session.execute(upsert, execution_options={"populate_existing": True})
    ).one()
    await audit.append(
        session,
        tenant_id=tenant_id,
        actor=actor,
        action="topic.created" if inserted else "topic.updated",
        target=key,
        details={"mode": mode},
    )
    return topic, bool(inserted)


async def get_topic(
    session: AsyncSession, *, tenant_id: uuid.UUID, mode: str, key: str
) -> Topic | None:
    topic: Topic | None = await session.scalar(
        select(Topic)
        .where(Topic.tenant_id == tenant_id, Topic.mode == mode, Topic.key == key)
        .execution_options(populate_existing=True)
    )
    return topic


async def existing_topics(
    session: AsyncSession, wanted: set[tuple[uuid.UUID, str, str]]
) -> set[tuple[uuid.UUID, str, str]]:
    """Which of the (tenant, mode, key) exist, in one query (the intake asks for a batch)."""
    if not wanted:
        return set()
    rows = await session.execute(
        select(Topic.tenant_id, Topic.mode, Topic.key).where(
            tuple_(Topic.tenant_id, Topic.mode, Topic.key).in_(sorted(wanted))
        )
    )
    return {(tenant_id, mode, key) for tenant_id, mode, key in rows.all()}


async def list_topics(
    session: AsyncSession, *, tenant_id: uuid.UUID, mode: str, limit: int, cursor: str | None
) -> Page[Topic]:
    """Topics by key ascending, after the key `cursor` (the primary key's order)."""
    query = select(Topic).where(Topic.tenant_id == tenant_id, Topic.mode == mode)
    if cursor is not None:
        query = query.where(Topic.key > cursor)
    rows = list((await session.scalars(query.order_by(Topic.key).limit(limit + 1))).all())
    has_more = len(rows) > limit
    rows = rows[:limit]
    return Page(rows, has_more, rows[-1].key if has_more else None)


async def delete_topic(
    session: AsyncSession, *, tenant_id: uuid.UUID, mode: str, key: str, actor: str
) -> Topic | None:
    """Delete a topic; its memberships go with it (ON DELETE CASCADE)."""
    topic: Topic | None = await session.scalar(
        delete(Topic)
        .where(Topic.tenant_id == tenant_id, Topic.mode == mode, Topic.key == key)
        .returning(Topic),
        execution_options={"populate_existing": True},
    )
    if topic is None:
        return None
    await audit.append(
        session,
        tenant_id=tenant_id,
        actor=actor,
        action="topic.deleted",
        target=key,
        details={"mode": mode, "member_count": topic.member_count},
    )
    return topic


# Held until commit: a topic cannot be deleted under a change of its members, and a change
# finds no topic once a deletion has committed.
_TOPIC_KEY_SHARE = text(
    """
    SELECT 1 FROM topics WHERE tenant_id = :tenant_id AND mode = :mode AND key = :key
       FOR KEY SHARE
    """
)
# Both statements below resolve the ids the same way: `wanted` holds the ids asked for, once
# each; `found` the recipients of this tenant and mode they name, each id a probe of the
# unique index on (tenant_id, mode, external_id), the only plan open whatever the statistics
# (app/recipients/lookups.py). Each answers one row: rows written, recipients found, the
# topic's count after the change, and the ids found nowhere.
#
# An addition locks the recipients in external id order and inserts its memberships in
# recipient id order, so that two additions of overlapping sets wait for each other's rows
# in the same order. A recipient erased meanwhile fails the re-check its lock makes (its
# external id is replaced) and is not found.
_ADD = text(
    """
    WITH wanted AS (
        SELECT DISTINCT unnest(CAST(:external_ids AS text[])) AS external_id ORDER BY 1
    ),
    found AS (
        SELECT r.id, r.external_id FROM wanted AS w
         CROSS JOIN LATERAL (
               SELECT x.id, x.external_id, x.erased_at FROM recipients AS x
                WHERE x.tenant_id = :tenant_id AND x.mode = :mode
                  AND x.external_id = w.external_id
               OFFSET 0 FOR KEY SHARE
               ) AS r
         WHERE r.erased_at IS NULL
    ),
    changed AS (
        INSERT INTO topic_members (tenant_id, mode, topic_key, recipient_id)
        SELECT :tenant_id, :mode, :key, f.id FROM found AS f ORDER BY f.id
        ON CONFLICT DO NOTHING
        RETURNING recipient_id
    ),
    counted AS (
        UPDATE topics SET member_count = member_count + (SELECT count(*) FROM changed)
         WHERE tenant_id = :tenant_id AND mode = :mode AND key = :key
        RETURNING member_count
    )
    SELECT (SELECT count(*) FROM changed) AS changed,
           (SELECT count(*) FROM found) AS found,
           (SELECT member_count FROM counted) AS member_count,
           ARRAY(SELECT w.external_id FROM wanted AS w
                  WHERE NOT EXISTS (SELECT 1 FROM found AS f WHERE f.external_id = w.external_id)
                  ORDER BY w.external_id) AS not_found
    """
)
# The memberships are locked in recipient id order before they are deleted (same reason).
_REMOVE = text(
    """
    WITH wanted AS (SELECT DISTINCT unnest(CAST(:external_ids AS text[])) AS external_id),
    found AS (
        SELECT r.id, r.external_id FROM wanted AS w
         CROSS JOIN LATERAL (
               SELECT x.id, x.external_id, x.erased_at FROM recipients AS x
                WHERE x.tenant_id = :tenant_id AND x.mode = :mode
                  AND x.external_id = w.external_id
               OFFSET 0
               ) AS r
         WHERE r.erased_at IS NULL
    ),
    doomed AS (
        SELECT m.recipient_id FROM topic_members AS m JOIN found AS f ON m.recipient_id = f.id
         WHERE m.tenant_id = :tenant_id AND m.mode = :mode AND m.topic_key = :key
         ORDER BY m.recipient_id FOR UPDATE OF m
    ),
    changed AS (
        DELETE FROM topic_members AS m USING doomed AS d
         WHERE m.tenant_id = :tenant_id AND m.mode = :mode AND m.topic_key = :key
           AND m.recipient_id = d.recipient_id
        RETURNING m.recipient_id
    ),
    counted AS (
        UPDATE topics SET member_count = member_count - (SELECT count(*) FROM changed)
         WHERE tenant_id = :tenant_id AND mode = :mode AND key = :key
        RETURNING member_count
    )
    SELECT (SELECT count(*) FROM changed) AS changed,
           (SELECT count(*) FROM found) AS found,
           (SELECT member_count FROM counted) AS member_count,
           ARRAY(SELECT w.external_id FROM wanted AS w
                  WHERE NOT EXISTS (SELECT 1 FROM found AS f WHERE f.external_id = w.external_id)
                  ORDER BY w.external_id) AS not_found
    """
)


async def add_members(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    mode: str,
    key: str,
    external_ids: Sequence[str],
    actor: str,
) -> MembersChange | None:
    """Add the recipients named to the topic; None when there is no such topic."""
    return await _change(session, _ADD, "added", tenant_id, mode, key, external_ids, actor)


async def remove_members(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    mode: str,
    key: str,
    external_ids: Sequence[str],
    actor: str,
) -> MembersChange | None:
    """Remove the recipients named from the topic; None when there is no such topic."""
    return await _change(session, _REMOVE, "removed", tenant_id, mode, key, external_ids, actor)


async def _change(
    session: AsyncSession,
    statement: TextClause,
    verb: str,
    tenant_id: uuid.UUID,
    mode: str,
    key: str,
    external_ids: Sequence[str],
    actor: str,
) -> MembersChange | None:
    wanted = check_external_ids(external_ids)
    scope = {"tenant_id": tenant_id, "mode": mode, "key": key}
    if await session.scalar(_TOPIC_KEY_SHARE, scope) is None:
        return None
    row = (await session.execute(statement, {**scope, "external_ids": wanted})).one()
    missing = set(row.not_found)
    change = MembersChange(
        changed=row.changed,
        unchanged=row.found - row.changed,
        not_found=[e for e in wanted if e in missing],  # in the order given
        member_count=row.member_count,
    )
    await audit.append(
        session,
        tenant_id=tenant_id,
        actor=actor,
        action=f"topic.members_{verb}",
        target=key,
        details={
            "mode": mode,
            verb: change.changed,
            "unchanged": change.unchanged,
            "not_found": len(change.not_found),
        },
    )
    return change


async def list_members(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    mode: str,
    key: str,
    limit: int,
    cursor: uuid.UUID | None,
) -> Page[Member]:
    """Members by recipient id ascending (uuid7: oldest recipients first), after `cursor`.

    The primary key (tenant_id, mode, topic_key, recipient_id) serves the order."""
    query = (
        select(TopicMember.recipient_id, Recipient.external_id, TopicMember.created_at)
        .join(
            Recipient,
            (Recipient.tenant_id == TopicMember.tenant_id)
            & (Recipient.id == TopicMember.recipient_id),
        )
        .where(
            TopicMember.tenant_id == tenant_id,
            TopicMember.mode == mode,
            TopicMember.topic_key == key,
        )
    )
    if cursor is not None:
        query = query.where(TopicMember.recipient_id > cursor)
    rows = (await session.execute(query.order_by(TopicMember.recipient_id).limit(limit + 1))).all()
    members = [Member(r.recipient_id, r.external_id, r.created_at) for r in rows[:limit]]
    has_more = len(rows) > limit
    return Page(members, has_more, str(members[-1].recipient_id) if has_more else None)


# Topics' counts are locked in key order before they move: two erasures of members of the
# same topics wait for each other rather than deadlock.
_LEAVE_TOPICS = text(
    """
    WITH gone AS (
        DELETE FROM topic_members
         WHERE tenant_id = :tenant_id AND mode = :mode AND recipient_id = :recipient_id
        RETURNING topic_key
    ),
    locked AS (
        SELECT t.key FROM topics AS t
         WHERE t.tenant_id = :tenant_id AND t.mode = :mode
           AND t.key IN (SELECT topic_key FROM gone)
         ORDER BY t.key FOR NO KEY UPDATE
    ),
    counted AS (
        UPDATE topics AS t SET member_count = t.member_count - 1
          FROM locked AS l
         WHERE t.tenant_id = :tenant_id AND t.mode = :mode AND t.key = l.key
        RETURNING t.key
    )
    SELECT count(*) FROM gone
    """
)


async def leave_topics(
    session: AsyncSession, *, tenant_id: uuid.UUID, mode: str, recipient_id: uuid.UUID
) -> int:
    """Remove a recipient from every topic, each count down by one (erasure); how many.

    Found through ix_topic_members_tenant_id_recipient_id."""
    left = await session.scalar(
        _LEAVE_TOPICS, {"tenant_id": tenant_id, "mode": mode, "recipient_id": recipient_id}
    )
    return int(left or 0)
