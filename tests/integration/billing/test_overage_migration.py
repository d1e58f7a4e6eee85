"""0035 adds overage_reports; its downgrade removes it, and upgrading again works."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from app.migrate import downgrade, upgrade
from app.runtime import ServiceUrls
from tests.conftest import _plain_dsn, create_database, drop_database

REPORT = (
    "INSERT INTO overage_reports (identifier, tenant_id, period, flush_id, quantity)"
    " VALUES ($1, $2, '2026-12', 'f1', $3)"
)


async def _tables(url: str) -> set[str]:
    connection = await asyncpg.connect(_plain_dsn(url))
    try:
        rows = await connection.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    finally:
        await connection.close()
    return {row["tablename"] for row in rows}


async def test_overage_reports_up_and_down(server_urls: ServiceUrls) -> None:
    name = f"herald_migrations_{uuid.uuid4().hex[:8]}"
    url = await create_database(server_urls.database_url, name)
    tenant_id = uuid.uuid4()
    try:
        await asyncio.to_thread(upgrade, url, "0035_overage_reports")
        connection = await asyncpg.connect(_plain_dsn(url))
        try:
            await connection.execute("INSERT INTO tenants (id, name) VALUES ($1, 'T')", tenant_id)
            await connection.execute(REPORT, f"{tenant_id}:2026-12:f1", tenant_id, 3)
            row = await connection.fetchrow("SELECT * FROM overage_reports")
            assert row is not None
            assert (row["attempts"], row["reported_at"], row["failed_at"]) == (0, None, None)
            assert row["next_attempt_at"] == row["created_at"]  # due at once
            with pytest.raises(asyncpg.UniqueViolationError):  # one report per identifier
                await connection.execute(REPORT, f"{tenant_id}:2026-12:f1", tenant_id, 3)
            with pytest.raises(asyncpg.CheckViolationError):  # nothing to bill: no report
                await connection.execute(REPORT, f"{tenant_id}:2026-12:f2", tenant_id, 0)
            await connection.execute("DELETE FROM tenants WHERE id = $1", tenant_id)
            assert await connection.fetchval("SELECT count(*) FROM overage_reports") == 0
        finally:
            await connection.close()

        await asyncio.to_thread(downgrade, url, "0034_usage_warnings")
        tables = await _tables(url)
        assert "overage_reports" not in tables and "billing_accounts" in tables

        await asyncio.to_thread(upgrade, url, "0035_overage_reports")
        assert "overage_reports" in await _tables(url)
    finally:
        await drop_database(server_urls.database_url, name)
