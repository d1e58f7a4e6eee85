"""Upgrading a database written before the keyed audit log (0009): legacy audit chains are sealed by
`herald migrate` and stay checked; unkeyed credential fingerprints are replaced.

The old rows are written as the previous version wrote them (plain SHA-256 chains,
fingerprints the SHA-256 of the credentials) into a database migrated up to the revision
before it, then the database is upgraded and `herald migrate` run as an operator would.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.audit import service as audit
from app.audit.models import AuditEntry
from app.crypto import AUDIT_KEY_CONTEXT, Keyring, MacKeyring
from app.db import create_engine, session_factory
from app.migrate import alembic_config, upgrade
from app.providers import service
from app.providers.models import ProviderConfig
from app.runtime import ServiceUrls
from tests.conftest import create_database, drop_database

AUDIT_KEY, ENCRYPTION_KEY = b"a" * 32, b"e" * 32
KEYS = MacKeyring([("k1", AUDIT_KEY)], context=AUDIT_KEY_CONTEXT)
RING = Keyring([("e1", ENCRYPTION_KEY)])
ENV = {
    "HERALD_AUDIT_KEYS": f"k1:{base64.urlsafe_b64encode(AUDIT_KEY).decode()}",
    "HERALD_ENCRYPTION_KEYS": f"e1:{base64.urlsafe_b64encode(ENCRYPTION_KEY).decode()}",
}
CREDENTIALS = {"api_key": "SG.guessable"}


def before_keyed_audit(url: str) -> str:
    """The revision the keyed audit log follows, whatever it is after merges."""
    revision = ScriptDirectory.from_config(alembic_config(url)).get_revision("0009_audit_hmac")
    assert revision is not None and isinstance(revision.down_revision, str)
    return revision.down_revision


@pytest.fixture
async def old_database(server_urls: ServiceUrls) -> AsyncIterator[tuple[str, AsyncEngine]]:
    name = f"herald_upgrade_{uuid.uuid4().hex[:8]}"
    url = await create_database(server_urls.database_url, name)
    await asyncio.to_thread(upgrade, url, before_keyed_audit(url))
    engine = create_engine(url)
    yield url, engine
    await engine.dispose()
    await drop_database(server_urls.database_url, name)


async def write_legacy_chain(engine: AsyncEngine, tenant_id: uuid.UUID, length: int) -> None:
    async with engine.begin() as connection:
        await connection.execute(
            text("INSERT INTO tenants (id, name) VALUES (:id, :name)"),
            {"id": tenant_id, "name": f"tenant {tenant_id}"},
        )
        prev = audit.GENESIS
        start = datetime(2026, 11, 1, tzinfo=UTC)
        for seq in range(1, length + 1):
            fields: dict[str, Any] = {
                "tenant_id": tenant_id,
                "seq": seq,
                "actor": "user:ada@example.com",
                "action": "key.created",
                "target": str(seq),
                "details": {"n": seq},
                "created_at": start + timedelta(seconds=seq, microseconds=seq),
            }
            digest = audit.legacy_hash(prev_hash=prev, **fields)
            await connection.execute(
                text(
                    "INSERT INTO audit_log (tenant_id, seq, actor, action, target, details, "
                    "created_at, prev_hash, hash) VALUES (:tenant_id, :seq, :actor, :action, "
                    ":target, :details, :created_at, :prev, :hash)"
                ),
                {**fields, "details": json.dumps(fields["details"]), "prev": prev, "hash": digest},
            )
            prev = digest


async def write_old_config(engine: AsyncEngine, tenant_id: uuid.UUID) -> tuple[uuid.UUID, str]:
    """A SendGrid config as the previous version stored it; its unkeyed fingerprint."""
    config = ProviderConfig(id=uuid.uuid4(), tenant_id=tenant_id)
    service.seal_credentials(config, CREDENTIALS, RING)
    unkeyed = hashlib.sha256(json.dumps(CREDENTIALS, separators=(",", ":")).encode()).hexdigest()
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO provider_configs (id, tenant_id, channel, provider, name, priority, "
                "rate_per_second, burst, credentials_ciphertext, key_id, fingerprint, options) "
                "VALUES (:id, :tenant, 'email', 'sendgrid', 'old', 0, 100, 200, :sealed, :key, "
                ":fingerprint, :options)"
            ),
            {
                "id": config.id,
                "tenant": tenant_id,
                "sealed": config.credentials_ciphertext,
                "key": config.key_id,
                "fingerprint": unkeyed[:16],
                "options": json.dumps({"from_email": "a@example.com"}),
            },
        )
    return config.id, unkeyed[:16]


async def migrate(url: str, service_urls: ServiceUrls) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "DATABASE_URL": url, "REDIS_URL": service_urls.redis_url, **ENV}
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "app.cli", "migrate"],
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_legacy_chains_are_sealed_and_stay_checked(
    old_database: tuple[str, AsyncEngine], service_urls: ServiceUrls
) -> None:
    url, engine = old_database
    first, second = uuid.uuid4(), uuid.uuid4()
    await write_legacy_chain(engine, first, 3)
    await write_legacy_chain(engine, second, 2)
    config_id, unkeyed = await write_old_config(engine, first)

    # The schema alone (alembic upgrade): the chains end in unkeyed entries, which is also
    # what a chain rewritten without the key would look like.
    await asyncio.to_thread(upgrade, url)
    async with session_factory(engine)() as session:
        result = await audit.check(session, keys=KEYS)
    assert [(b.tenant_id, b.seq) for b in result.breaks] == sorted([(first, 3), (second, 2)])

    done = await migrate(url, service_urls)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "sealed 2 audit chains of legacy entries with a keyed entry",
        "replaced 1 provider credential fingerprints",
        "database schema is up to date",
    ]
    again = await migrate(url, service_urls)  # idempotent: nothing left to seal or replace
    assert again.stdout.splitlines() == ["database schema is up to date"]

    async with session_factory(engine)() as session:
        result = await audit.check(session, keys=KEYS)
        assert (result.breaks, result.chains, result.entries, result.legacy_entries) == (
            [],
            2,
            8,  # 5 legacy, 2 seals, the fingerprint's replacement
            5,
        )
        seal = await session.scalar(
            select(AuditEntry).where(AuditEntry.tenant_id == first, AuditEntry.seq == 4)
        )
        assert seal is not None
        assert (seal.action, seal.details, seal.key_id) == (
            audit.SEAL_ACTION,
            {"legacy_entries": 3},
            "k1",
        )
        config = await session.get(ProviderConfig, config_id)
        assert config is not None and config.key_id == "e1"
        assert config.fingerprint == service.fingerprint(CREDENTIALS, RING) != unkeyed
        # The replacement is itself in the tenant's log.
        rekeyed = await session.scalar(
            select(AuditEntry).where(AuditEntry.action == "provider.rekeyed")
        )
        assert rekeyed is not None and rekeyed.target == str(config_id)

    # The legacy prefix, rewritten with recomputed SHA-256 (no key needed for that): the
    # seal's MAC covers the last legacy hash, so the chain breaks at the seal.
    async with engine.begin() as connection:
        rows = (
            await connection.execute(
                select(AuditEntry.__table__)
                .where(AuditEntry.tenant_id == first, AuditEntry.seq <= 3)
                .order_by(AuditEntry.seq)
            )
        ).all()
        await connection.execute(text("ALTER TABLE audit_log DISABLE TRIGGER USER"))
        await connection.execute(text("ALTER TABLE audit_log DROP CONSTRAINT ck_audit_log_keyed"))
        prev = rows[1].prev_hash
        for row in rows[1:]:
            fields = {
                "tenant_id": row.tenant_id,
                "seq": row.seq,
                "actor": "someone else",
                "action": row.action,
                "target": row.target,
                "details": row.details,
                "created_at": row.created_at,
            }
            digest = audit.legacy_hash(prev_hash=prev, **fields)
            await connection.execute(
                text("UPDATE audit_log SET actor = :a, prev_hash = :p, hash = :h WHERE id = :id"),
                {"a": "someone else", "p": prev, "h": digest, "id": row.id},
            )
            prev = digest
        await connection.execute(text("ALTER TABLE audit_log ENABLE TRIGGER USER"))
    async with session_factory(engine)() as session:
        result = await audit.check(session, keys=KEYS)
    assert [(b.tenant_id, b.seq, b.reason) for b in result.breaks] == [
        (first, 4, "previous hash does not match the previous entry")
    ]
