"""`herald keys rotate-encryption`: every credential moves to the newest key, in batches,
idempotently, without losing an update made meanwhile; then the old key can be removed.

Each test has a database of its own: the rotation walks the whole provider_configs table.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.audit import service as audit
from app.audit.models import AuditEntry
from app.crypto import DecryptionError, Keyring
from app.db import create_engine, session_factory
from app.migrate import upgrade
from app.providers import service
from app.providers.models import ProviderConfig
from app.providers.rotation import rotate
from app.runtime import ServiceUrls
from app.tenants.service import create_tenant
from tests.conftest import create_database, drop_database

OLD, NEW, OTHER = b"o" * 32, b"n" * 32, b"x" * 32


def env_key(key_id: str, key: bytes) -> str:
    return f"{key_id}:{base64.urlsafe_b64encode(key).decode()}"


@dataclass
class Database:
    url: str
    engine: AsyncEngine

    def session(self) -> AsyncSession:
        return session_factory(self.engine)()


@pytest.fixture
async def db(server_urls: ServiceUrls) -> AsyncIterator[Database]:
    name = f"herald_rotation_{uuid.uuid4().hex[:8]}"
    url = await create_database(server_urls.database_url, name)
    await asyncio.to_thread(upgrade, url)
    engine = create_engine(url)
    yield Database(url, engine)
    await engine.dispose()
    await drop_database(server_urls.database_url, name)


async def make_configs(db: Database, keyring: Keyring, count: int) -> list[uuid.UUID]:
    """`count` SendGrid configs over two tenants, sealed with `keyring`; api_key `SG.<n>`."""
    async with db.session() as session:
        tenants = [
            (await create_tenant(session, name=name, actor="test")).id for name in ("A", "B")
        ]
        ids = []
        for n in range(count):
            saved = await service.create_config(
                session,
                tenant_id=tenants[n % 2],
                data=service.ConfigInput(
                    channel="email",
                    provider="sendgrid",
                    name=f"config {n}",
                    credentials={"api_key": f"SG.{n}"},
                    options={"from_email": "hello@acme.test"},
                ),
                actor="test",
                keyring=keyring,
            )
            ids.append(saved.config.id)
        await session.commit()
    return ids


async def configs(db: Database) -> list[ProviderConfig]:
    async with db.session() as session:
        query = select(ProviderConfig).order_by(ProviderConfig.id)
        return list((await session.scalars(query)).all())


async def test_rotation_moves_every_credential_and_the_old_key_can_go(db: Database) -> None:
    old = Keyring([("old", OLD)])
    ids = await make_configs(db, old, 5)
    # One row as it was before fingerprints were keyed: the SHA-256 of the credentials.
    unkeyed = hashlib.sha256(b'{"api_key":"SG.0"}').hexdigest()[:16]
    async with db.session() as session:
        await session.execute(
            update(ProviderConfig).where(ProviderConfig.id == ids[0]).values(fingerprint=unkeyed)
        )
        await session.commit()
    new_only = Keyring([("new", NEW)])
    # Before: removing the old key leaves every config unreadable.
    with pytest.raises(DecryptionError):
        service.open_credentials((await configs(db))[0], new_only)

    both = Keyring([("new", NEW), ("old", OLD)])
    async with db.session() as session:
        report = await rotate(session, both, batch_size=2)  # three batches
    assert (report.checked, report.resealed, report.fingerprinted, report.current) == (5, 5, 0, 0)
    assert report.unreadable == []

    # The old key is removed from the setting: every config still opens, and routes.
    rows = await configs(db)
    assert {row.key_id for row in rows} == {"new"}
    assert {row.id: service.open_credentials(row, new_only) for row in rows} == {
        config_id: {"api_key": f"SG.{n}"} for n, config_id in enumerate(ids)
    }
    assert {row.fingerprint for row in rows} == {
        service.fingerprint({"api_key": f"SG.{n}"}, new_only) for n in range(5)
    }
    async with db.session() as session:
        tenant_id = rows[0].tenant_id
        routes = await service.routes_for(
            session, tenant_id=tenant_id, channel="email", mode="live", keyring=new_only
        )
    assert sorted(route.config_id for route in routes) == [  # type: ignore[type-var]
        row.id for row in rows if row.tenant_id == tenant_id
    ]

    # Safe to re-run: nothing left to do, nothing audited twice.
    async with db.session() as session:
        again = await rotate(session, both, batch_size=2)
    assert (again.checked, again.resealed, again.fingerprinted, again.current) == (5, 0, 0, 5)
    async with db.session() as session:
        rekeyed = (
            await session.scalars(select(AuditEntry).where(AuditEntry.action == "provider.rekeyed"))
        ).all()
        assert sorted(entry.target for entry in rekeyed) == sorted(str(i) for i in ids)
        assert {entry.details["key_id"] for entry in rekeyed} == {"new"}
        assert await audit.verify(session) == []


async def test_migrate_mode_replaces_unkeyed_fingerprints_without_reencrypting(
    db: Database,
) -> None:
    old = Keyring([("old", OLD)])
    await make_configs(db, old, 1)
    unkeyed = hashlib.sha256(b'{"api_key":"SG.0"}').hexdigest()[:16]
    async with db.session() as session:
        await session.execute(update(ProviderConfig).values(fingerprint=unkeyed))
        await session.commit()
    both = Keyring([("new", NEW), ("old", OLD)])
    async with db.session() as session:
        report = await rotate(session, both, reseal=False)
    assert (report.resealed, report.fingerprinted) == (0, 1)
    [row] = await configs(db)
    assert row.key_id == "old"  # re-encryption waits for the operator
    assert row.fingerprint == service.fingerprint({"api_key": "SG.0"}, both) != unkeyed


async def test_an_update_made_during_the_rotation_is_kept(db: Database) -> None:
    old, both = Keyring([("old", OLD)]), Keyring([("new", NEW), ("old", OLD)])
    ids = await make_configs(db, old, 3)
    # An API request changes config 1's credentials; its transaction is still open (the row
    # locked) when the rotation reaches that row.
    async with db.session() as api:
        saved = await service.update_config(
            api,
            tenant_id=(await configs(db))[1].tenant_id,
            config_id=ids[1],
            changes=service.ConfigChanges(credentials={"api_key": "SG.changed"}),
            actor="test",
            keyring=both,
        )
        assert saved is not None
        async with db.session() as session:
            rotation = asyncio.create_task(rotate(session, both, batch_size=10))
            try:
                await _until_waiting_for_a_lock(db, rotation)
                await api.commit()
                report = await rotation
            finally:  # a failure above must not leave the task on the session's connection
                rotation.cancel()
                await asyncio.gather(rotation, return_exceptions=True)
    assert report.unreadable == []
    new_only = Keyring([("new", NEW)])
    opened = {row.id: service.open_credentials(row, new_only) for row in await configs(db)}
    assert opened[ids[1]] == {"api_key": "SG.changed"}  # not the value read before the commit
    assert opened[ids[0]] == {"api_key": "SG.0"} and opened[ids[2]] == {"api_key": "SG.2"}


async def _until_waiting_for_a_lock(db: Database, rotation: asyncio.Task[object]) -> None:
    async with db.session() as probe:
        for _ in range(600):
            if rotation.done():  # it cannot have passed the locked row: say why it ended
                raise AssertionError(f"the rotation ended early: {rotation.result()!r}")
            waiting = await probe.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            )
            if waiting:
                return
            await asyncio.sleep(0.05)
    raise AssertionError("the rotation never waited for the locked row")


async def herald(
    db: Database, service_urls: ServiceUrls, *arguments: str, **env: str
) -> subprocess.CompletedProcess[str]:
    environ = {
        **os.environ,
        "DATABASE_URL": db.url,
        "REDIS_URL": service_urls.redis_url,
        **env,
    }
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "app.cli", *arguments],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_the_command_reports_counts_and_unreadable_configs(
    db: Database, service_urls: ServiceUrls
) -> None:
    ids = await make_configs(db, Keyring([("old", OLD)]), 3)
    rotated = f"{env_key('new', NEW)},{env_key('old', OLD)}"

    result = await herald(
        db,
        service_urls,
        "keys",
        "rotate-encryption",
        "--batch-size",
        "2",
        HERALD_ENCRYPTION_KEYS=rotated,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "provider configs: 3 checked, 3 re-encrypted under key 'new', 0 fingerprints "
        "replaced, 0 already current",
        "no provider credential needs 'old' any more (erased suppressions may: see README, "
        "Key rotation)",
    ]
    # The old key dropped from the setting: nothing to do, nothing unreadable.
    result = await herald(
        db, service_urls, "keys", "rotate-encryption", HERALD_ENCRYPTION_KEYS=env_key("new", NEW)
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "provider configs: 3 checked, 0 re-encrypted under key 'new', 0 fingerprints "
        "replaced, 3 already current"
    ]
    # A key that opens none of them: every config is named, and the exit code says so.
    result = await herald(
        db, service_urls, "keys", "rotate-encryption", HERALD_ENCRYPTION_KEYS=env_key("x", OTHER)
    )
    assert result.returncode == 1
    assert [line for line in result.stderr.splitlines() if line.startswith("UNREADABLE")] == [
        f"UNREADABLE provider config {config_id}" for config_id in ids
    ]
    assert "3 configs open with no configured key" in result.stderr
