"""Migrations run upgrade → downgrade → upgrade on real PostgreSQL, and match the models."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection

from app.db import Base, create_engine
from app.migrate import downgrade, upgrade
from app.models import load_all
from app.runtime import ServiceUrls
from tests.conftest import _plain_dsn, create_database, drop_database


async def _tables(url: str) -> set[str]:
    connection = await asyncpg.connect(_plain_dsn(url))
    try:
        rows = await connection.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    finally:
        await connection.close()
    return {row["tablename"] for row in rows}


async def test_upgrade_downgrade_upgrade(server_urls: ServiceUrls) -> None:
    name = f"herald_migrations_{uuid.uuid4().hex[:8]}"
    url = await create_database(server_urls.database_url, name)
    try:
        await asyncio.to_thread(upgrade, url)
        expected = {"tenants", "api_keys", "users", "memberships", "audit_log", "alembic_version"}
        assert expected <= await _tables(url)

        await asyncio.to_thread(downgrade, url, "base")
        assert await _tables(url) == {"alembic_version"}

        await asyncio.to_thread(upgrade, url)
        assert expected <= await _tables(url)
    finally:
        await drop_database(server_urls.database_url, name)


async def test_models_and_migrations_agree(service_urls: ServiceUrls) -> None:
    load_all()
    engine = create_engine(service_urls.database_url, pool=False)

    def diff(connection: Connection) -> list[object]:
        return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))

    async with engine.connect() as connection:
        differences = await connection.run_sync(diff)
    await engine.dispose()
    assert differences == []
