"""0033 adds billing_accounts and stripe_events; its downgrade removes them, and upgrading
again works."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from app.migrate import downgrade, upgrade
from app.runtime import ServiceUrls
from tests.conftest import _plain_dsn, create_database, drop_database

TABLES = {"billing_accounts", "stripe_events"}


async def _tables(url: str) -> set[str]:
    connection = await asyncpg.connect(_plain_dsn(url))
    try:
        rows = await connection.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    finally:
        await connection.close()
    return {row["tablename"] for row in rows}


async def test_billing_tables_up_and_down(server_urls: ServiceUrls) -> None:
    name = f"herald_migrations_{uuid.uuid4().hex[:8]}"
    url = await create_database(server_urls.database_url, name)
    tenants = [uuid.uuid4(), uuid.uuid4()]
    account = "INSERT INTO billing_accounts (tenant_id, customer_id) VALUES ($1, $2)"
    try:
        await asyncio.to_thread(upgrade, url, "0033_billing")
        connection = await asyncpg.connect(_plain_dsn(url))
        try:
            for tenant_id in tenants:
                await connection.execute(
                    "INSERT INTO tenants (id, name) VALUES ($1, 'T')", tenant_id
                )
            await connection.execute(account, tenants[0], "cus_1")
            with pytest.raises(asyncpg.UniqueViolationError):  # one tenant per customer
                await connection.execute(account, tenants[1], "cus_1")
            event = (
                "INSERT INTO stripe_events (id, type, tenant_id, outcome, created)"
                " VALUES ('evt_1', 'invoice.paid', $1, 'applied', now())"
            )
            await connection.execute(event, tenants[0])
            with pytest.raises(asyncpg.UniqueViolationError):  # an event is applied once
                await connection.execute(event, tenants[0])
            await connection.execute("DELETE FROM tenants WHERE id = $1", tenants[0])
            assert await connection.fetchval("SELECT count(*) FROM billing_accounts") == 0
            # The event stays recorded as seen, its tenant gone.
            assert await connection.fetchval("SELECT tenant_id FROM stripe_events") is None
        finally:
            await connection.close()

        await asyncio.to_thread(downgrade, url, "0031_sso_configs")
        assert not TABLES & await _tables(url)

        await asyncio.to_thread(upgrade, url, "0033_billing")
        assert await _tables(url) >= TABLES
    finally:
        await drop_database(server_urls.database_url, name)
