"""The audit log's hash chain: intact chains verify, an edited row is detected."""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit import service as audit
from app.audit.models import AuditEntry
from app.runtime import ServiceUrls
from tests.support import make_tenant


async def test_chain_verifies_and_links(session: AsyncSession) -> None:
    acme = await make_tenant(session, "Chained")
    for n in range(3):
        await audit.append(
            session, tenant_id=acme.tenant_id, actor="test", action="x", target=str(n)
        )
    await session.commit()
    entries = (
        await session.scalars(
            select(AuditEntry)
            .where(AuditEntry.tenant_id == acme.tenant_id)
            .order_by(AuditEntry.seq)
        )
    ).all()
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5]
    assert entries[0].prev_hash == audit.GENESIS
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(entries))
    assert await audit.verify(session, tenant_id=acme.tenant_id) == []


async def test_concurrent_appends_keep_one_chain(engine, session: AsyncSession) -> None:  # type: ignore[no-untyped-def]
    from app.db import session_factory

    acme = await make_tenant(session, "Busy")
    sessions = session_factory(engine)

    async def one(n: int) -> None:
        async with sessions() as s:
            await audit.append(s, tenant_id=acme.tenant_id, actor="t", action="x", target=str(n))
            await s.commit()

    await asyncio.gather(*(one(n) for n in range(20)))
    assert await audit.verify(session, tenant_id=acme.tenant_id) == []
    total = await session.scalar(
        select(AuditEntry.seq)
        .where(AuditEntry.tenant_id == acme.tenant_id)
        .order_by(AuditEntry.seq.desc())
    )
    assert total == 22


async def test_rows_cannot_be_updated_or_deleted(session: AsyncSession) -> None:
    acme = await make_tenant(session, "Immutable")
    with pytest.raises(DBAPIError, match="append-only"):
        await session.execute(
            text("UPDATE audit_log SET actor = 'someone else' WHERE tenant_id = :t"),
            {"t": acme.tenant_id},
        )
    await session.rollback()
    with pytest.raises(DBAPIError, match="append-only"):
        await session.execute(
            text("DELETE FROM audit_log WHERE tenant_id = :t"), {"t": acme.tenant_id}
        )
    await session.rollback()


async def test_an_edited_row_is_detected(session: AsyncSession, service_urls: ServiceUrls) -> None:
    acme = await make_tenant(session, "Tampered")
    globex = await make_tenant(session, "Untouched")
    # Someone with the database's owner rights bypasses the trigger and rewrites history.
    await session.execute(text("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only"))
    await session.execute(
        text("UPDATE audit_log SET actor = 'nobody' WHERE tenant_id = :t AND seq = 2"),
        {"t": acme.tenant_id},
    )
    await session.execute(text("ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only"))
    await session.commit()

    breaks = await audit.verify(session, tenant_id=acme.tenant_id)
    assert [(b.seq, b.reason) for b in breaks] == [(2, "contents do not match the stored hash")]
    assert await audit.verify(session, tenant_id=globex.tenant_id) == []

    command = [sys.executable, "-m", "app.cli", "audit", "verify", "--tenant", str(acme.tenant_id)]
    env = {
        **os.environ,
        "DATABASE_URL": service_urls.database_url,
        "REDIS_URL": service_urls.redis_url,
    }
    result = await asyncio.to_thread(
        subprocess.run, command, env=env, capture_output=True, text=True
    )
    assert result.returncode == 1
    assert f"BROKEN tenant {acme.tenant_id} at entry 2" in result.stderr

    ok = [sys.executable, "-m", "app.cli", "audit", "verify", "--tenant", str(globex.tenant_id)]
    result = await asyncio.to_thread(subprocess.run, ok, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "intact" in result.stdout


async def test_a_deleted_row_is_detected(session: AsyncSession) -> None:
    acme = await make_tenant(session, "Gap")
    await audit.append(session, tenant_id=acme.tenant_id, actor="t", action="x", target="y")
    await session.commit()
    await session.execute(text("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only"))
    await session.execute(
        text("DELETE FROM audit_log WHERE tenant_id = :t AND seq = 2"), {"t": acme.tenant_id}
    )
    await session.execute(text("ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only"))
    await session.commit()
    breaks = await audit.verify(session, tenant_id=acme.tenant_id)
    assert [(b.seq, b.reason) for b in breaks] == [(3, "entry 2 is missing")]
