"""Migrations run upgrade → downgrade → upgrade on real PostgreSQL, and match the models."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest
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


async def test_topic_preferences_up_and_down(server_urls: ServiceUrls) -> None:
    """0014 adds the table on a database holding recipients, with the columns others write
    SQL against, and its downgrade takes the table away and nothing else."""
    name = f"herald_migrations_{uuid.uuid4().hex[:8]}"
    url = await create_database(server_urls.database_url, name)
    tenant_id, recipient_id, stranger_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    try:
        await asyncio.to_thread(upgrade, url, "0013_paused_notifications")
        connection = await asyncpg.connect(_plain_dsn(url))
        try:
            await connection.execute(
                "INSERT INTO tenants (id, name) VALUES ($1, 'T'), ($2, 'U')", tenant_id, stranger_id
            )
            await connection.execute(
                "INSERT INTO recipients (id, tenant_id, mode, external_id)"
                " VALUES ($1, $2, 'live', 'pat')",
                recipient_id,
                tenant_id,
            )
        finally:
            await connection.close()

        await asyncio.to_thread(upgrade, url, "0014_topic_preferences")
        connection = await asyncpg.connect(_plain_dsn(url))
        try:
            columns = await connection.fetch(
                "SELECT column_name, data_type, character_maximum_length, is_nullable"
                " FROM information_schema.columns WHERE table_name = 'topic_preferences'"
                " ORDER BY ordinal_position"
            )
            assert [tuple(c) for c in columns] == [
                ("tenant_id", "uuid", None, "NO"),
                ("recipient_id", "uuid", None, "NO"),
                ("topic_key", "character varying", 100, "NO"),
                ("channel", "character varying", 16, "NO"),
                ("enabled", "boolean", None, "NO"),
                ("updated_at", "timestamp with time zone", None, "NO"),
            ]
            key = await connection.fetchval(
                "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
                " WHERE conname = 'pk_topic_preferences'"
            )
            assert key == "PRIMARY KEY (recipient_id, topic_key, channel)"
            insert = (
                "INSERT INTO topic_preferences (tenant_id, recipient_id, topic_key, channel,"
                " enabled) VALUES ($1, $2, 'weekly-digest', $3, false)"
            )
            await connection.execute(insert, tenant_id, recipient_id, "email")
            with pytest.raises(asyncpg.CheckViolationError):
                await connection.execute(insert, tenant_id, recipient_id, "fax")
            # Another tenant cannot name this recipient.
            with pytest.raises(asyncpg.ForeignKeyViolationError):
                await connection.execute(insert, stranger_id, recipient_id, "sms")
        finally:
            await connection.close()

        await asyncio.to_thread(downgrade, url, "0013_paused_notifications")
        tables = await _tables(url)
        assert "topic_preferences" not in tables and "recipients" in tables

        await asyncio.to_thread(upgrade, url)
        connection = await asyncpg.connect(_plain_dsn(url))
        try:
            await connection.execute(insert, tenant_id, recipient_id, "email")
            # A recipient row deleted (a tenant closed) takes its switches along.
            await connection.execute("DELETE FROM recipients WHERE id = $1", recipient_id)
            assert await connection.fetchval("SELECT count(*) FROM topic_preferences") == 0
        finally:
            await connection.close()
    finally:
        await drop_database(server_urls.database_url, name)


async def test_ses_and_postmark_configs_up_and_down(server_urls: ServiceUrls) -> None:
    """0023 lets provider_configs name ses and postmark; its downgrade removes those configs
    (the code before it cannot use them) and refuses the names again, keeping the others."""
    name = f"herald_migrations_{uuid.uuid4().hex[:8]}"
    url = await create_database(server_urls.database_url, name)
    tenant_id = uuid.uuid4()
    insert = (
        "INSERT INTO provider_configs (id, tenant_id, channel, provider, name, priority,"
        " rate_per_second, burst, credentials_ciphertext, key_id, fingerprint, options)"
        " VALUES ($1, $2, 'email', $3, $3, 0, 14, 14, '\\x00', 'k1', 'f', '{}')"
    )

    async def configs() -> list[str]:
        connection = await asyncpg.connect(_plain_dsn(url))
        try:
            rows = await connection.fetch("SELECT provider FROM provider_configs ORDER BY name")
        finally:
            await connection.close()
        return [row["provider"] for row in rows]

    try:
        await asyncio.to_thread(upgrade, url, "0022_receipts_and_events")
        connection = await asyncpg.connect(_plain_dsn(url))
        try:
            await connection.execute("INSERT INTO tenants (id, name) VALUES ($1, 'T')", tenant_id)
            await connection.execute(insert, uuid.uuid4(), tenant_id, "sendgrid")
            with pytest.raises(asyncpg.CheckViolationError):
                await connection.execute(insert, uuid.uuid4(), tenant_id, "ses")
        finally:
            await connection.close()

        await asyncio.to_thread(upgrade, url, "0023_ses_postmark")
        connection = await asyncpg.connect(_plain_dsn(url))
        try:
            for provider in ("ses", "postmark"):
                await connection.execute(insert, uuid.uuid4(), tenant_id, provider)
            with pytest.raises(asyncpg.CheckViolationError):
                await connection.execute(insert, uuid.uuid4(), tenant_id, "pigeon")
        finally:
            await connection.close()
        assert await configs() == ["postmark", "sendgrid", "ses"]

        await asyncio.to_thread(downgrade, url, "0022_receipts_and_events")
        assert await configs() == ["sendgrid"]
        connection = await asyncpg.connect(_plain_dsn(url))
        try:
            with pytest.raises(asyncpg.CheckViolationError):
                await connection.execute(insert, uuid.uuid4(), tenant_id, "postmark")
        finally:
            await connection.close()

        await asyncio.to_thread(upgrade, url)
        connection = await asyncpg.connect(_plain_dsn(url))
        try:
            await connection.execute(insert, uuid.uuid4(), tenant_id, "ses")
        finally:
            await connection.close()
    finally:
        await drop_database(server_urls.database_url, name)
