"""0032 adds usage_counts and usage_flushes and lets tenants.plan name any configured plan;
its downgrade puts tenants of plans it did not know back on free, and upgrading again works."""

from __future__ import annotations

import asyncio
import datetime
import uuid

import asyncpg
import pytest

from app.migrate import downgrade, upgrade
from app.runtime import ServiceUrls
from tests.conftest import _plain_dsn, create_database, drop_database


async def test_usage_up_and_down(server_urls: ServiceUrls) -> None:
    name = f"herald_migrations_{uuid.uuid4().hex[:8]}"
    url = await create_database(server_urls.database_url, name)
    pro, growth = uuid.uuid4(), uuid.uuid4()
    month = datetime.date(2026, 12, 1)
    try:
        await asyncio.to_thread(upgrade, url, "0031_sso_configs")
        connection = await asyncpg.connect(_plain_dsn(url))
        try:
            with pytest.raises(asyncpg.CheckViolationError):
                await connection.execute(
                    "INSERT INTO tenants (id, name, plan) VALUES ($1, 'T', 'pro')", pro
                )
        finally:
            await connection.close()

        await asyncio.to_thread(upgrade, url, "0032_usage")
        connection = await asyncpg.connect(_plain_dsn(url))
        try:
            await connection.execute(
                "INSERT INTO tenants (id, name, plan) VALUES ($1, 'P', 'pro'), ($2, 'G', 'growth')",
                pro,
                growth,
            )
            count = (
                "INSERT INTO usage_counts (tenant_id, period, channel, count)"
                " VALUES ($1, $2, 'email', 5)"
            )
            await connection.execute(count, pro, month)
            with pytest.raises(asyncpg.UniqueViolationError):  # one row per tenant, month, channel
                await connection.execute(count, pro, month)
            await connection.execute("INSERT INTO usage_flushes (id) VALUES ('f1')")
            await connection.execute("DELETE FROM tenants WHERE id = $1", pro)
            assert await connection.fetchval("SELECT count(*) FROM usage_counts") == 0
            await connection.execute(
                "INSERT INTO tenants (id, name, plan) VALUES ($1, 'P', 'pro')", pro
            )
        finally:
            await connection.close()

        await asyncio.to_thread(downgrade, url, "0031_sso_configs")
        connection = await asyncpg.connect(_plain_dsn(url))
        try:
            plans = dict(await connection.fetch("SELECT id, plan FROM tenants"))
            assert plans == {pro: "free", growth: "growth"}
            tables = {
                r["tablename"]
                for r in await connection.fetch(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                )
            }
            assert not {"usage_counts", "usage_flushes"} & tables
        finally:
            await connection.close()

        await asyncio.to_thread(upgrade, url, "0032_usage")
    finally:
        await drop_database(server_urls.database_url, name)
