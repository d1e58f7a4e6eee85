"""0026 adds member_invites and password_resets on a database holding users and tenants,
with the constraints the services rely on; its downgrade takes both away and nothing else."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from app.migrate import downgrade, upgrade
from app.runtime import ServiceUrls
from tests.conftest import _plain_dsn, create_database, drop_database

BEFORE = "0024_webhook_delivery_retention"
REVISION = "0026_member_invites_resets"
INVITE = (
    "INSERT INTO member_invites (id, tenant_id, email, role, token_hash, invited_by, delivery,"
    " expires_at) VALUES ($1, $2, $3, $4, $5, 'user:o@x.example', $6, now() + interval '7 days')"
)
RESET = (
    "INSERT INTO password_resets (token_hash, user_id, expires_at)"
    " VALUES ($1, $2, now() + interval '1 hour')"
)


async def _tables(url: str) -> set[str]:
    connection = await asyncpg.connect(_plain_dsn(url))
    try:
        rows = await connection.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    finally:
        await connection.close()
    return {row["tablename"] for row in rows}


async def test_member_invites_and_password_resets_up_and_down(server_urls: ServiceUrls) -> None:
    name = f"herald_migrations_{uuid.uuid4().hex[:8]}"
    url = await create_database(server_urls.database_url, name)
    tenant_id, user_id = uuid.uuid4(), uuid.uuid4()
    try:
        await asyncio.to_thread(upgrade, url, BEFORE)
        connection = await asyncpg.connect(_plain_dsn(url))
        try:
            await connection.execute("INSERT INTO tenants (id, name) VALUES ($1, 'T')", tenant_id)
            await connection.execute(
                "INSERT INTO users (id, email, name, password_hash)"
                " VALUES ($1, 'ann@x.example', 'Ann', 'h')",
                user_id,
            )
        finally:
            await connection.close()
        before = await _tables(url)
        assert "member_invites" not in before and "password_resets" not in before

        await asyncio.to_thread(upgrade, url, REVISION)
        connection = await asyncpg.connect(_plain_dsn(url))
        try:
            args = (tenant_id, "Vic@x.example", "viewer", b"a" * 32, "mail")
            await connection.execute(INVITE, uuid.uuid4(), *args)
            # One pending invite per address (in any case) and tenant.
            with pytest.raises(asyncpg.UniqueViolationError):
                await connection.execute(
                    INVITE, uuid.uuid4(), tenant_id, "vic@X.example", "admin", b"b" * 32, "mail"
                )
            with pytest.raises(asyncpg.CheckViolationError):
                await connection.execute(
                    INVITE, uuid.uuid4(), tenant_id, "r@x.example", "emperor", b"c" * 32, "mail"
                )
            with pytest.raises(asyncpg.CheckViolationError):
                await connection.execute(
                    INVITE, uuid.uuid4(), tenant_id, "d@x.example", "viewer", b"d" * 32, "fax"
                )
            await connection.execute(RESET, b"r" * 32, user_id)
            with pytest.raises(asyncpg.ForeignKeyViolationError):
                await connection.execute(RESET, b"s" * 32, uuid.uuid4())
            # A user or tenant deleted takes its links along.
            await connection.execute("DELETE FROM users WHERE id = $1", user_id)
            await connection.execute("DELETE FROM tenants WHERE id = $1", tenant_id)
            assert await connection.fetchval("SELECT count(*) FROM member_invites") == 0
            assert await connection.fetchval("SELECT count(*) FROM password_resets") == 0
        finally:
            await connection.close()

        await asyncio.to_thread(downgrade, url, BEFORE)
        assert await _tables(url) == before

        await asyncio.to_thread(upgrade, url)
        assert {"member_invites", "password_resets"} <= await _tables(url)
    finally:
        await drop_database(server_urls.database_url, name)
