"""0031 adds sso_configs and sso_domains; its downgrade removes them, and upgrading again works."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from app.migrate import downgrade, upgrade
from app.runtime import ServiceUrls
from tests.conftest import _plain_dsn, create_database, drop_database


async def _tables(url: str) -> set[str]:
    connection = await asyncpg.connect(_plain_dsn(url))
    try:
        rows = await connection.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    finally:
        await connection.close()
    return {row["tablename"] for row in rows}


async def test_sso_configs_up_and_down(server_urls: ServiceUrls) -> None:
    name = f"herald_migrations_{uuid.uuid4().hex[:8]}"
    url = await create_database(server_urls.database_url, name)
    tenants = [uuid.uuid4(), uuid.uuid4()]
    config = (
        "INSERT INTO sso_configs (tenant_id, issuer, client_id, secret_ciphertext, key_id,"
        " default_role, updated_by) VALUES ($1, 'https://id.example', 'herald', '\\x00', 'k1',"
        " $2, 'test')"
    )
    try:
        await asyncio.to_thread(upgrade, url, "0031_sso_configs")
        connection = await asyncpg.connect(_plain_dsn(url))
        try:
            for tenant_id in tenants:
                await connection.execute(
                    "INSERT INTO tenants (id, name) VALUES ($1, 'T')", tenant_id
                )
            await connection.execute(config, tenants[0], "viewer")
            with pytest.raises(asyncpg.CheckViolationError):  # nobody joins as an owner
                await connection.execute(config, tenants[1], "owner")
            await connection.execute(config, tenants[1], "developer")
            domain = "INSERT INTO sso_domains (domain, tenant_id) VALUES ($1, $2)"
            await connection.execute(domain, "acme.example", tenants[0])
            with pytest.raises(asyncpg.UniqueViolationError):  # one tenant per domain
                await connection.execute(domain, "acme.example", tenants[1])
            await connection.execute("DELETE FROM tenants WHERE id = $1", tenants[0])
            assert await connection.fetchval("SELECT count(*) FROM sso_domains") == 0
        finally:
            await connection.close()

        await asyncio.to_thread(downgrade, url, "0030_dashboard_list_filters")
        assert not {"sso_configs", "sso_domains"} & await _tables(url)

        await asyncio.to_thread(upgrade, url, "0031_sso_configs")
        assert {"sso_configs", "sso_domains"} <= await _tables(url)
    finally:
        await drop_database(server_urls.database_url, name)
