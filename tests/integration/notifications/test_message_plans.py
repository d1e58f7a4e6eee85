"""The statements a broadcast runs on `messages` read their own index, whatever the planner's
statistics say.

A broadcast grows `messages` by a million rows in a minute, faster than statistics follow
(and not at all where autovacuum is off), and its notification is newer than any of them: the
planner then takes any partial index it may use for a handful of rows. These statements once
read ix_messages_due that way, every entry of it live or dead on every claim, release and
count. ix_messages_due's predicate now admits only the sweeper (migration 0017); here each
statement is planned with sequential scans forbidden, so that the planner has to say which
index it would take.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession

from app.delivery import claims
from app.ids import uuid7s
from app.notifications import dispatch, expansion


async def _plan(session: AsyncSession, statement: Any, params: dict[str, Any] | None = None) -> str:
    if params is None:  # a Core statement: its values inline, as EXPLAIN needs no bind step
        compiled = statement.compile(
            dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}
        )
        sql, params = str(compiled), {}
    else:
        sql = statement.text
    await session.execute(text("SET LOCAL enable_seqscan = off"))
    rows = await session.execute(text(f"EXPLAIN {sql}"), params)
    return "\n".join(row[0][:160] for row in rows)  # not the ids of a thousand-id list


async def test_a_claim_reads_messages_by_primary_key(session: AsyncSession) -> None:
    plan = await _plan(session, claims._CLAIM, {"ids": uuid7s(100), "lease": timedelta(seconds=30)})
    await session.rollback()
    assert "Index Scan on pk_messages" in plan or "using pk_messages on messages m" in plan, plan
    assert "ix_messages_due" not in plan, plan


async def test_a_window_count_reads_messages_by_primary_key(session: AsyncSession) -> None:
    plan = await _plan(session, expansion.still_queued_statement(uuid7s(1000)))
    await session.rollback()
    assert "Index Scan on pk_messages" in plan or "using pk_messages" in plan, plan
    assert "ix_messages_due" not in plan, plan


async def test_a_release_walks_the_held_index_in_order_up_to_its_window(
    session: AsyncSession,
) -> None:
    await expansion.walk_held_in_order(session)
    for after in (None, uuid7s(1)[0]):
        plan = await _plan(session, expansion.release_statement(uuid.uuid4(), 1000, after))
        # An ordered scan that the Limit stops: no Sort, no bitmap of every held entry.
        assert "Index Scan using ix_messages_held on messages" in plan, plan
        assert "Sort" not in plan and "Bitmap" not in plan, plan
        assert "ix_messages_due" not in plan, plan
    await session.rollback()


async def test_a_notifications_queued_messages_are_read_by_its_unique_key(
    session: AsyncSession,
) -> None:
    plan = await _plan(session, dispatch.queued_statement(uuid.uuid4()))
    await session.rollback()
    assert "uq_messages_notification_id_recipient_id_channel_address" in plan, plan
    assert "ix_messages_due" not in plan, plan
