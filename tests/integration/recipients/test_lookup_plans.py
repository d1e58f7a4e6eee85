"""Lookups by external id probe the unique key once per id, whatever the statistics say.

Without statistics (an import newer than the last ANALYZE, or autovacuum off) the planner
took another (tenant_id, mode, …) index and compared every recipient of the tenant against
the wanted ids: a dispatch of 1,000 ids among 100,000 recipients took 19 s. Migration 0019
left the unique key the only index such a lookup can use (app/recipients/lookups.py); these
tests read the plans of every statement that resolves external ids, on a tenant whose
recipients were written after the last statistics, and check that the results still leave
out erased recipients.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import text
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession

from app.recipients import lookups, topics
from app.recipients.service import erase_recipient, get_by_external_ids, get_recipient
from tests.support import make_tenant

UNIQUE_KEY = "uq_recipients_tenant_id_mode_external_id"
OTHER_INDEXES = (
    "ix_recipients_tenant_id_mode_id",
    "ix_recipients_tenant_id_mode_email",
    "ix_recipients_tenant_id_mode_phone",
    "uq_recipients_tenant_id_id",
)
PEOPLE = 3_000


async def _tenant_with_people(session: AsyncSession) -> uuid.UUID:
    owner = await make_tenant(session, "Lookups", mode="test")
    await session.execute(
        text(
            "INSERT INTO recipients (tenant_id, mode, external_id, email, phone, id)"
            " SELECT :tenant_id, 'test', 'user-' || n, 'user-' || n || '@example.com',"
            " '+1555' || lpad(n::text, 7, '0'), gen_random_uuid()"
            " FROM generate_series(1, :people) AS n"
        ),
        {"tenant_id": owner.tenant_id, "people": PEOPLE},
    )
    return owner.tenant_id


async def _plan(session: AsyncSession, sql: str, params: dict[str, Any]) -> str:
    # A generic plan: the one a prepared statement settles on, its values unknown.
    await session.execute(text("SET LOCAL plan_cache_mode = force_generic_plan"))
    rows = await session.execute(text(f"EXPLAIN {sql}"), params)
    return "\n".join(row[0][:200] for row in rows)


def _core(statement: Any) -> str:
    return str(
        statement.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True})
    )


def _assert_probes_the_unique_key(plan: str) -> None:
    # The ids drive the loop: each is one probe of the unique key, no recipient is scanned
    # for the tenant and mode alone.
    assert "Nested Loop" in plan, plan
    assert "Function Scan on unnest" in plan or "CTE Scan on wanted" in plan, plan
    assert UNIQUE_KEY in plan, plan
    assert "Semi Join" not in plan and "Hash Join" not in plan, plan
    for index in OTHER_INDEXES:
        assert index not in plan, plan
    assert "Seq Scan on recipients" not in plan, plan


async def test_a_list_of_ids_probes_the_unique_key_locked_or_not(session: AsyncSession) -> None:
    tenant_id = await _tenant_with_people(session)
    wanted = [f"user-{n}" for n in range(1, 1001)]
    for lock in (True, False):
        statement = lookups.many(tenant_id=tenant_id, mode="test", external_ids=wanted, lock=lock)
        _assert_probes_the_unique_key(await _plan(session, _core(statement), {}))
    await session.rollback()


async def test_one_id_is_read_through_the_unique_key(session: AsyncSession) -> None:
    tenant_id = await _tenant_with_people(session)
    statement = lookups.one(tenant_id=tenant_id, mode="test", external_id="user-7")
    plan = await _plan(session, _core(statement), {})
    await session.rollback()
    assert f"Index Scan using {UNIQUE_KEY}" in plan, plan
    for index in OTHER_INDEXES:
        assert index not in plan, plan


async def test_topic_changes_probe_the_unique_key(session: AsyncSession) -> None:
    tenant_id = await _tenant_with_people(session)
    params = {
        "external_ids": [f"user-{n}" for n in range(1, 1001)],
        "tenant_id": tenant_id,
        "mode": "test",
        "key": "news",
    }
    for statement in (topics._ADD, topics._REMOVE):
        plan = await _plan(session, statement.text, params)
        recipients_lines = [line for line in plan.splitlines() if "on recipients" in line]
        assert recipients_lines, plan
        assert all(UNIQUE_KEY in line for line in recipients_lines), plan
    await session.rollback()


async def test_lookups_leave_out_erased_recipients_and_unknown_ids(session: AsyncSession) -> None:
    tenant_id = await _tenant_with_people(session)
    await erase_recipient(
        session, tenant_id=tenant_id, mode="test", external_id="user-2", actor="test"
    )
    asked = ["user-3", "user-2", "nobody", "user-1", "user-3"]
    for_delivery = await get_by_external_ids(
        session, tenant_id=tenant_id, mode="test", external_ids=asked, for_delivery=True
    )
    plain = await get_by_external_ids(session, tenant_id=tenant_id, mode="test", external_ids=asked)
    assert [r.external_id for r in for_delivery] == ["user-3", "user-1"]
    assert [r.external_id for r in plain] == ["user-3", "user-1"]
    assert (
        await get_recipient(session, tenant_id=tenant_id, mode="test", external_id="user-2") is None
    )
    one = await get_recipient(session, tenant_id=tenant_id, mode="test", external_id="user-1")
    assert one is not None and one.external_id == "user-1"
    # Erasing twice finds nothing the second time.
    again = await erase_recipient(
        session, tenant_id=tenant_id, mode="test", external_id="user-2", actor="test"
    )
    assert again is None
    await session.rollback()
