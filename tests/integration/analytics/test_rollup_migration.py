"""0025 counts what the messages already show (backfill), its triggers count what changes
after it, and its downgrade leaves messages writable without them."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg

from app.migrate import downgrade, upgrade
from app.runtime import ServiceUrls
from tests.conftest import _plain_dsn, create_database, drop_database

NOTIFICATION = (
    "INSERT INTO notifications (id, tenant_id, mode, request_hash, template_key,"
    " template_version, category, channels, audience, data, priority, status)"
    " VALUES ($1, $2, 'test', 'h', 'hello', 1, 'default', '{email}', '{}', '{}', 'low',"
    " 'dispatched')"
)
MESSAGE = (
    "INSERT INTO messages (id, notification_id, tenant_id, mode, recipient_id, channel,"
    " address, status, sent_at)"
    " VALUES ($1, $2, $3, 'test', $4, 'email', $5, CAST($6 AS varchar),"
    " CASE WHEN CAST($6 AS varchar) = 'sent' THEN now() END)"
)
ROLLUPS = (
    "SELECT measure, bucket, day IS NULL AS state, CAST(sum(n) AS int) AS n"
    " FROM message_rollups WHERE tenant_id = $1 AND measure <> 'latency'"
    " GROUP BY measure, bucket, day IS NULL HAVING sum(n) <> 0"
)


async def _rollups(url: str, tenant_id: uuid.UUID) -> dict[tuple[str, int, bool], int]:
    connection = await asyncpg.connect(_plain_dsn(url))
    try:
        rows = await connection.fetch(ROLLUPS, tenant_id)
    finally:
        await connection.close()
    return {(row["measure"], row["bucket"], row["state"]): row["n"] for row in rows}


async def _write(url: str, *statements: tuple[str, tuple[object, ...]]) -> None:
    connection = await asyncpg.connect(_plain_dsn(url))
    try:
        for statement, arguments in statements:
            await connection.execute(statement, *arguments)
    finally:
        await connection.close()


async def test_overview_rollups_up_and_down(server_urls: ServiceUrls) -> None:
    name = f"herald_migrations_{uuid.uuid4().hex[:8]}"
    url = await create_database(server_urls.database_url, name)
    tenant_id, notification_id = uuid.uuid4(), uuid.uuid4()

    def message(status: str, message_id: uuid.UUID | None = None) -> tuple[str, tuple[object, ...]]:
        address = f"{uuid.uuid4().hex}@b.example"
        arguments = (message_id or uuid.uuid4(), notification_id, tenant_id, uuid.uuid4())
        return MESSAGE, (*arguments, address, status)

    later = uuid.uuid4()

    try:
        await asyncio.to_thread(upgrade, url, "0024_webhook_delivery_retention")
        await _write(
            url,
            ("INSERT INTO tenants (id, name) VALUES ($1, 'T')", (tenant_id,)),
            (NOTIFICATION, (notification_id, tenant_id)),
            message("queued"),
            message("failed"),
            message("sent"),
        )

        await asyncio.to_thread(upgrade, url, "0025_overview_rollups")
        assert await _rollups(url, tenant_id) == {
            ("accepted", 0, False): 3,
            ("sent", 0, False): 1,
            ("pending", 2, True): 1,  # low priority
            ("in_dlq", 0, True): 1,
        }
        # From now on the triggers count: a message written and sent, the dead letter replayed.
        await _write(
            url,
            message("queued", later),
            ("UPDATE messages SET status = 'queued' WHERE status = 'failed'", ()),
            ("UPDATE messages SET status = 'sent', sent_at = now() WHERE id = $1", (later,)),
        )
        counted = await _rollups(url, tenant_id)
        assert counted[("accepted", 0, False)] == 4
        assert counted[("sent", 0, False)] == 2
        assert counted[("pending", 2, True)] == 2  # the first, and the one replayed
        assert ("in_dlq", 0, True) not in counted

        await asyncio.to_thread(downgrade, url, "0024_webhook_delivery_retention")
        await _write(url, message("queued"), ("UPDATE messages SET status = 'failed'", ()))
        connection = await asyncpg.connect(_plain_dsn(url))
        try:
            assert await connection.fetchval("SELECT to_regclass('message_rollups')") is None
            assert await connection.fetchval("SELECT to_regtype('message_rollup_change')") is None
        finally:
            await connection.close()

        await asyncio.to_thread(upgrade, url)
        assert (await _rollups(url, tenant_id))[("in_dlq", 0, True)] == 5
    finally:
        await drop_database(server_urls.database_url, name)
