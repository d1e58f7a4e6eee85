"""0034 adds usage_warnings: one row per tenant, month, channel and threshold (80 or 100),
gone with its tenant; its downgrade drops the table and nothing else."""

from __future__ import annotations

import asyncio
import datetime
import uuid

import asyncpg
import pytest

from app.migrate import downgrade, upgrade
from app.runtime import ServiceUrls
from tests.conftest import _plain_dsn, create_database, drop_database

WARN = (
    "INSERT INTO usage_warnings (tenant_id, period, channel, threshold, used, quota)"
    " VALUES ($1, $2, 'email', $3, 80, 100)"
)


async def _tables(connection: asyncpg.Connection) -> set[str]:
    rows = await connection.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {r["tablename"] for r in rows}


async def test_usage_warnings_up_and_down(server_urls: ServiceUrls) -> None:
    name = f"herald_migrations_{uuid.uuid4().hex[:8]}"
    url = await create_database(server_urls.database_url, name)
    tenant = uuid.uuid4()
    month = datetime.date(2026, 12, 1)
    try:
        await asyncio.to_thread(upgrade, url, "0034_usage_warnings")
        connection = await asyncpg.connect(_plain_dsn(url))
        try:
            await connection.execute("INSERT INTO tenants (id, name) VALUES ($1, 'T')", tenant)
            await connection.execute(WARN, tenant, month, 80)
            with pytest.raises(asyncpg.UniqueViolationError):  # once per threshold
                await connection.execute(WARN, tenant, month, 80)
            with pytest.raises(asyncpg.CheckViolationError):  # 80 or 100 only
                await connection.execute(WARN, tenant, month, 50)
            await connection.execute(WARN, tenant, month, 100)
            mailed = await connection.fetchval(
                "SELECT count(*) FROM usage_warnings WHERE mailed_at IS NULL"
            )
            assert mailed == 2
            await connection.execute("DELETE FROM tenants WHERE id = $1", tenant)
            assert await connection.fetchval("SELECT count(*) FROM usage_warnings") == 0
            before = await _tables(connection)
        finally:
            await connection.close()

        await asyncio.to_thread(downgrade, url, "0033_billing")
        connection = await asyncpg.connect(_plain_dsn(url))
        try:
            assert await _tables(connection) == before - {"usage_warnings"}
        finally:
            await connection.close()
        await asyncio.to_thread(upgrade, url, "0034_usage_warnings")
    finally:
        await drop_database(server_urls.database_url, name)
