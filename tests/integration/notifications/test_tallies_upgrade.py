"""Upgrading to the message tallies (0015): messages written before are counted by the
backfill and later ones by the triggers; the downgrade leaves no trigger, function or table
behind, and upgrading again counts afresh."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db import create_engine, session_factory
from app.migrate import alembic_config, downgrade, upgrade
from app.notifications import tallies
from app.runtime import ServiceUrls
from tests.conftest import create_database, drop_database

TALLIES = "0015_message_tallies"


def before_tallies(url: str) -> str:
    """The revision the tallies follow, whatever it is after merges."""
    revision = ScriptDirectory.from_config(alembic_config(url)).get_revision(TALLIES)
    assert revision is not None and isinstance(revision.down_revision, str)
    return revision.down_revision


@pytest.fixture
async def old_database(server_urls: ServiceUrls) -> AsyncIterator[tuple[str, AsyncEngine]]:
    name = f"herald_upgrade_{uuid.uuid4().hex[:8]}"
    url = await create_database(server_urls.database_url, name)
    await asyncio.to_thread(upgrade, url, before_tallies(url))
    engine = create_engine(url, pool=False)
    yield url, engine
    await engine.dispose()
    await drop_database(server_urls.database_url, name)


async def write_messages(engine: AsyncEngine, statuses: dict[uuid.UUID, list[str]]) -> None:
    """Messages of each notification in these statuses, as an older version wrote them."""
    tenant_id = uuid.uuid4()
    async with engine.begin() as connection:
        await connection.execute(
            text("INSERT INTO tenants (id, name) VALUES (:id, 'Old')"), {"id": tenant_id}
        )
        for notification_id, wanted in statuses.items():
            await connection.execute(
                text(
                    "INSERT INTO notifications (id, tenant_id, mode, request_hash, template_key,"
                    " template_version, channels, category, audience, data, priority, status)"
                    " VALUES (:id, :tenant, 'live', 'h', 't', 1, '{email}', 'c', '{}', '{}',"
                    " 'normal', 'dispatched')"
                ),
                {"id": notification_id, "tenant": tenant_id},
            )
            for status in wanted:
                recipient_id = uuid.uuid4()
                await connection.execute(
                    text(
                        "INSERT INTO recipients (id, tenant_id, mode, external_id)"
                        " VALUES (:id, :tenant, 'live', :external)"
                    ),
                    {"id": recipient_id, "tenant": tenant_id, "external": str(recipient_id)},
                )
                await connection.execute(
                    text(
                        "INSERT INTO messages (id, notification_id, tenant_id, mode,"
                        " recipient_id, channel, address, status)"
                        " VALUES (:id, :n, :tenant, 'live', :r, 'email', 'a@example.com', :s)"
                    ),
                    {
                        "id": uuid.uuid4(),
                        "n": notification_id,
                        "tenant": tenant_id,
                        "r": recipient_id,
                        "s": status,
                    },
                )


async def counts(engine: AsyncEngine, notification_id: uuid.UUID) -> dict[str, int]:
    async with session_factory(engine)() as session:
        return await tallies.counts(session, notification_id=notification_id)


async def leftovers(engine: AsyncEngine) -> set[str]:
    """Whatever of the tallies is in the database: table, functions, triggers."""
    async with engine.connect() as connection:
        rows = await connection.execute(
            text(
                "SELECT relname FROM pg_class WHERE relname LIKE 'message_tallies%'"
                " UNION ALL SELECT proname FROM pg_proc WHERE proname LIKE 'message_tallies%'"
                " UNION ALL SELECT tgname FROM pg_trigger WHERE tgname LIKE '%tally%'"
            )
        )
        return set(rows.scalars())


async def test_upgrade_counts_earlier_messages_and_downgrade_removes_everything(
    old_database: tuple[str, AsyncEngine],
) -> None:
    url, engine = old_database
    busy, waiting = uuid.uuid4(), uuid.uuid4()
    await write_messages(engine, {busy: ["sent", "sent", "failed"], waiting: ["queued"] * 2})

    await asyncio.to_thread(upgrade, url)
    assert await counts(engine, busy) == {"sent": 2, "failed": 1}
    assert await counts(engine, waiting) == {"queued": 2}
    async with engine.begin() as connection:  # the triggers count what comes next
        await connection.execute(
            text("UPDATE messages SET status = 'sent' WHERE notification_id = :n"), {"n": waiting}
        )
    assert await counts(engine, waiting) == {"sent": 2}

    await asyncio.to_thread(downgrade, url, before_tallies(url))
    assert await leftovers(engine) == set()
    async with engine.begin() as connection:  # and writes go on without them
        await connection.execute(text("UPDATE messages SET status = 'failed'"))

    await asyncio.to_thread(upgrade, url)
    assert await counts(engine, busy) == {"failed": 3}
    assert await counts(engine, waiting) == {"failed": 2}
    async with engine.begin() as connection:
        await connection.execute(text("TRUNCATE messages CASCADE"))
    assert await counts(engine, busy) == {}
