"""The audit log's chains: HMAC under a key outside the database, anchors, legacy entries.

The attacks here are made the way someone with the database's owner rights (but not the
audit key) would: the append-only trigger disabled, rows rewritten or deleted, hashes
recomputed with everything the database holds.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit import anchors
from app.audit import service as audit
from app.audit.models import AuditEntry
from app.crypto import AUDIT_KEY_CONTEXT, MacKeyring, default_audit_keys
from app.runtime import ServiceUrls
from app.tenants.models import Tenant
from tests.support import make_tenant

K1, K2 = b"1" * 32, b"2" * 32


def ring(*keys: tuple[str, bytes]) -> MacKeyring:
    return MacKeyring(keys, context=AUDIT_KEY_CONTEXT)


def env_keys(*keys: tuple[str, bytes]) -> str:
    return ",".join(f"{kid}:{base64.urlsafe_b64encode(key).decode()}" for kid, key in keys)


async def bare_tenant(session: AsyncSession, name: str) -> uuid.UUID:
    """A tenant without the `tenant.created` entry, so that a test signs every entry itself."""
    tenant = Tenant(name=name)
    session.add(tenant)
    await session.flush()
    return tenant.id


async def as_owner(session: AsyncSession, statement: str, params: dict[str, Any]) -> None:
    """Run `statement` past the append-only trigger and the keyed-rows check, as the
    database's owner can, then put both back."""
    await session.execute(text("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only"))
    await session.execute(text("ALTER TABLE audit_log DROP CONSTRAINT ck_audit_log_keyed"))
    await session.execute(text(statement), params)
    await session.execute(
        text(
            "ALTER TABLE audit_log ADD CONSTRAINT ck_audit_log_keyed "
            "CHECK (key_id IS NOT NULL) NOT VALID"
        )
    )
    await session.execute(text("ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only"))
    await session.commit()


async def entries_of(session: AsyncSession, tenant_id: uuid.UUID) -> list[AuditEntry]:
    session.expire_all()
    query = select(AuditEntry).where(AuditEntry.tenant_id == tenant_id).order_by(AuditEntry.seq)
    return list((await session.scalars(query)).all())


def fields_of(entry: AuditEntry, **changes: Any) -> dict[str, Any]:
    fields = {
        "tenant_id": entry.tenant_id,
        "seq": entry.seq,
        "actor": entry.actor,
        "action": entry.action,
        "target": entry.target,
        "details": entry.details,
        "created_at": entry.created_at,
    }
    return {**fields, **changes}


async def rewrite(
    session: AsyncSession, entries: list[AuditEntry], *, keyed: bool, actor: str
) -> None:
    """Set `actor` in every entry given, recomputing the chain from the first with what
    someone without the key can compute: plain SHA-256, as before 0011. `keyed`: keep the
    rows' key ids (else they become legacy rows)."""
    prev = entries[0].prev_hash
    for entry in entries:
        digest = audit.legacy_hash(prev_hash=prev, **fields_of(entry, actor=actor))
        await as_owner(
            session,
            "UPDATE audit_log SET actor = :actor, prev_hash = :prev, hash = :hash, "
            "key_id = CASE WHEN :keyed THEN key_id END WHERE id = :id",
            {"actor": actor, "prev": prev, "hash": digest, "keyed": keyed, "id": entry.id},
        )
        prev = digest


async def herald(
    *arguments: str, service_urls: ServiceUrls, **env: str
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "app.cli", *arguments]
    environ = {
        **os.environ,
        "DATABASE_URL": service_urls.database_url,
        "REDIS_URL": service_urls.redis_url,
        **env,
    }
    return await asyncio.to_thread(
        subprocess.run, command, env=environ, capture_output=True, text=True, timeout=60
    )


async def test_chain_verifies_and_links(session: AsyncSession) -> None:
    acme = await make_tenant(session, "Chained")
    for n in range(3):
        await audit.append(
            session, tenant_id=acme.tenant_id, actor="test", action="x", target=str(n)
        )
    await session.commit()
    entries = await entries_of(session, acme.tenant_id)
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5]
    assert entries[0].prev_hash == audit.GENESIS
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(entries))
    assert {e.key_id for e in entries} == {default_audit_keys().current_key_id}
    result = await audit.check(session, tenant_id=acme.tenant_id)
    assert (result.breaks, result.chains, result.entries) == ([], 1, 5)


async def test_concurrent_appends_keep_one_chain(engine, session: AsyncSession) -> None:  # type: ignore[no-untyped-def]
    from app.db import session_factory

    acme = await make_tenant(session, "Busy")
    sessions = session_factory(engine)

    async def one(n: int) -> None:
        async with sessions() as s:
            await audit.append(s, tenant_id=acme.tenant_id, actor="t", action="x", target=str(n))
            await s.commit()

    await asyncio.gather(*(one(n) for n in range(20)))
    assert await audit.verify(session, tenant_id=acme.tenant_id) == []
    total = await session.scalar(
        select(AuditEntry.seq)
        .where(AuditEntry.tenant_id == acme.tenant_id)
        .order_by(AuditEntry.seq.desc())
    )
    assert total == 22


async def test_rows_cannot_be_updated_or_deleted_or_added_unkeyed(session: AsyncSession) -> None:
    acme = await make_tenant(session, "Immutable")
    with pytest.raises(DBAPIError, match="append-only"):
        await session.execute(
            text("UPDATE audit_log SET actor = 'someone else' WHERE tenant_id = :t"),
            {"t": acme.tenant_id},
        )
    await session.rollback()
    with pytest.raises(DBAPIError, match="append-only"):
        await session.execute(
            text("DELETE FROM audit_log WHERE tenant_id = :t"), {"t": acme.tenant_id}
        )
    await session.rollback()
    # What a process of the previous version would write: refused, not silently chained.
    last = (await entries_of(session, acme.tenant_id))[-1]
    with pytest.raises(IntegrityError, match="ck_audit_log_keyed"):
        await session.execute(
            text(
                "INSERT INTO audit_log (tenant_id, seq, actor, action, target, details, "
                "created_at, prev_hash, hash) VALUES (:t, :seq, 'old', 'x', 'y', '{}', now(), "
                ":prev, :prev)"
            ),
            {"t": acme.tenant_id, "seq": last.seq + 1, "prev": last.hash},
        )
    await session.rollback()


async def test_an_edited_row_is_detected(session: AsyncSession, service_urls: ServiceUrls) -> None:
    acme = await make_tenant(session, "Tampered")
    globex = await make_tenant(session, "Untouched")
    await audit.append(session, tenant_id=acme.tenant_id, actor="t", action="x", target="y")
    await session.commit()
    await as_owner(
        session,
        "UPDATE audit_log SET actor = 'nobody' WHERE tenant_id = :t AND seq = 2",
        {"t": acme.tenant_id},
    )

    breaks = await audit.verify(session, tenant_id=acme.tenant_id)
    assert [(b.seq, b.reason) for b in breaks] == [(2, "contents do not match the stored MAC")]
    assert await audit.verify(session, tenant_id=globex.tenant_id) == []

    result = await herald(
        "audit", "verify", "--tenant", str(acme.tenant_id), service_urls=service_urls
    )
    assert result.returncode == 1
    assert result.stderr == (
        f"BROKEN tenant {acme.tenant_id} at entry 2: contents do not match the stored MAC\n"
    )
    result = await herald(
        "audit", "verify", "--tenant", str(globex.tenant_id), service_urls=service_urls
    )
    assert result.returncode == 0, result.stderr
    assert "audit log intact: 1 chains, 2 entries (0 legacy)" in result.stdout


async def test_a_deleted_row_is_detected(session: AsyncSession) -> None:
    acme = await make_tenant(session, "Gap")
    await audit.append(session, tenant_id=acme.tenant_id, actor="t", action="x", target="y")
    await audit.append(session, tenant_id=acme.tenant_id, actor="t", action="x", target="z")
    await session.commit()
    await as_owner(
        session, "DELETE FROM audit_log WHERE tenant_id = :t AND seq = 2", {"t": acme.tenant_id}
    )
    breaks = await audit.verify(session, tenant_id=acme.tenant_id)
    assert [(b.seq, b.reason) for b in breaks] == [(3, "entry 2 is missing")]


async def test_a_chain_recomputed_without_the_key_is_detected(session: AsyncSession) -> None:
    # Before the HMAC, recomputing the SHA-256 of every entry from the edited one on made
    # the edit invisible: everything needed was in the database.
    acme = await make_tenant(session, "Rewritten")
    for n in range(3):
        await audit.append(session, tenant_id=acme.tenant_id, actor="t", action="x", target=str(n))
    await session.commit()
    await rewrite(session, (await entries_of(session, acme.tenant_id))[1:], keyed=True, actor="x")
    breaks = await audit.verify(session, tenant_id=acme.tenant_id)
    assert [(b.seq, b.reason) for b in breaks] == [(2, "contents do not match the stored MAC")]


async def test_a_chain_rewritten_as_legacy_entries_is_detected(session: AsyncSession) -> None:
    # Legacy (unkeyed) entries are accepted only before keyed ones: a chain turned into
    # legacy entries from the edit on, or from its start, no longer ends in a keyed entry.
    edited, whole = (
        await make_tenant(session, "Legacy tail"),
        await make_tenant(session, "All legacy"),
    )
    for tenant in (edited, whole):
        for n in range(3):
            await audit.append(
                session, tenant_id=tenant.tenant_id, actor="t", action="x", target=str(n)
            )
    await session.commit()
    await rewrite(
        session, (await entries_of(session, edited.tenant_id))[2:], keyed=False, actor="x"
    )
    await rewrite(session, await entries_of(session, whole.tenant_id), keyed=False, actor="x")

    breaks = await audit.verify(session, tenant_id=edited.tenant_id)
    assert [(b.seq, b.reason) for b in breaks] == [
        (3, "entry has no key (a legacy entry) but follows keyed entries")
    ]
    breaks = await audit.verify(session, tenant_id=whole.tenant_id)
    assert [(b.seq, b.reason) for b in breaks] == [
        (
            5,
            "the newest entry has no key: a chain of legacy entries must end in a keyed one "
            "(`herald migrate` seals it)",
        )
    ]


async def test_entries_verify_under_every_configured_key(session: AsyncSession) -> None:
    tenant_id = await bare_tenant(session, "Rotated")
    await audit.append(
        session, tenant_id=tenant_id, actor="t", action="x", target="1", keys=ring(("k1", K1))
    )
    rotated = ring(("k2", K2), ("k1", K1))
    await audit.append(
        session, tenant_id=tenant_id, actor="t", action="x", target="2", keys=rotated
    )
    await session.commit()
    assert [e.key_id for e in await entries_of(session, tenant_id)] == ["k1", "k2"]
    assert await audit.verify(session, tenant_id=tenant_id, keys=rotated) == []

    breaks = await audit.verify(session, tenant_id=tenant_id, keys=ring(("k2", K2)))
    assert [(b.seq, b.reason) for b in breaks] == [
        (1, "signed with key 'k1', which HERALD_AUDIT_KEYS does not hold")
    ]
    # Another key under the same id (a guessed or wrong key) does not verify either.
    breaks = await audit.verify(session, tenant_id=tenant_id, keys=ring(("k1", K2)))
    assert [(b.seq, b.reason) for b in breaks] == [(1, "contents do not match the stored MAC")]


async def test_deleting_the_newest_entries_is_caught_by_an_anchor(
    session: AsyncSession, service_urls: ServiceUrls, tmp_path: Path
) -> None:
    acme = await make_tenant(session, "Truncated")
    globex = await make_tenant(session, "Kept")
    for n in range(3):
        await audit.append(session, tenant_id=acme.tenant_id, actor="t", action="x", target=str(n))
    await session.commit()
    anchor_file = tmp_path / "anchors.jsonl"

    exported = await herald(
        "audit",
        "anchor",
        "--tenant",
        str(acme.tenant_id),
        "--output",
        str(anchor_file),
        service_urls=service_urls,
    )
    assert exported.returncode == 0, exported.stderr
    [printed] = [json.loads(line) for line in exported.stdout.splitlines()]
    head = (await entries_of(session, acme.tenant_id))[-1]
    assert (printed["tenant_id"], printed["seq"], printed["mac"]) == (
        str(acme.tenant_id),
        5,
        head.hash,
    )
    assert printed["key_id"] == head.key_id and "anchored_at" in printed
    assert printed["created_at"] == head.created_at.isoformat()
    assert anchor_file.read_text() == exported.stdout  # what was printed was appended
    assert exported.stderr == f"appended 1 anchors to {anchor_file}\n"
    # All chains, appended to the same file: it keeps the earlier export too.
    everything = await herald(
        "audit", "anchor", service_urls=service_urls, HERALD_AUDIT_ANCHOR_FILE=str(anchor_file)
    )
    assert everything.returncode == 0, everything.stderr
    assert anchor_file.read_text() == exported.stdout + everything.stdout
    assert {json.loads(line)["tenant_id"] for line in everything.stdout.splitlines()} >= {
        str(acme.tenant_id),
        str(globex.tenant_id),
    }

    # The newest two entries go. The chain alone cannot tell: what is left is intact.
    await as_owner(
        session, "DELETE FROM audit_log WHERE tenant_id = :t AND seq > 2", {"t": acme.tenant_id}
    )
    assert await audit.verify(session, tenant_id=acme.tenant_id) == []
    plain = await herald(
        "audit", "verify", "--tenant", str(acme.tenant_id), service_urls=service_urls
    )
    assert plain.returncode == 0 and "no anchors given" in plain.stdout

    for option in (["--anchors", str(anchor_file)], []):
        result = await herald(
            "audit",
            "verify",
            "--tenant",
            str(acme.tenant_id),
            *option,
            service_urls=service_urls,
            HERALD_AUDIT_ANCHOR_FILE=str(anchor_file),
        )
        assert result.returncode == 1
        assert result.stderr.startswith(
            f"BROKEN tenant {acme.tenant_id} at entry 5: anchored entry is missing (anchored "
        )
        assert result.stderr.endswith("); the chain now ends at entry 2\n")
        assert str(globex.tenant_id) not in result.stderr
    kept = await herald(
        "audit",
        "verify",
        "--tenant",
        str(globex.tenant_id),
        "--anchors",
        str(anchor_file),
        service_urls=service_urls,
    )
    assert kept.returncode == 0, kept.stderr
    assert "1 anchored entries present" in kept.stdout


async def test_an_anchored_entry_that_changed_is_named(session: AsyncSession) -> None:
    # Even someone holding the key, who re-signs the chain from an edited entry on, is
    # caught where the chain passes an anchored entry.
    tenant_id = await bare_tenant(session, "Re-signed")
    keys = ring(("k1", K1))
    for n in range(3):
        await audit.append(
            session, tenant_id=tenant_id, actor="t", action="x", target=str(n), keys=keys
        )
    await session.commit()
    [head] = await audit.heads(session, tenant_id=tenant_id)
    anchored_at = head.created_at
    anchored = {tenant_id: {3: audit.AnchoredEntry(head.mac, anchored_at)}}
    entries = await entries_of(session, tenant_id)
    prev = entries[0].hash
    for entry in entries[1:]:
        fields = fields_of(entry, actor="insider")
        mac = keys.mac("k1", audit.mac_message(key_id="k1", prev_hash=prev, **fields))
        await as_owner(
            session,
            "UPDATE audit_log SET actor = 'insider', prev_hash = :prev, hash = :mac WHERE id = :id",
            {"prev": prev, "mac": mac, "id": entry.id},
        )
        prev = str(mac)
    assert await audit.verify(session, tenant_id=tenant_id, keys=keys) == []
    result = await audit.check(session, tenant_id=tenant_id, keys=keys, anchors=anchored)
    assert [(b.seq, b.reason) for b in result.breaks] == [
        (3, f"entry differs from its anchor of {anchored_at.isoformat()}")
    ]


async def test_a_chain_deleted_whole_is_caught_by_its_anchor(session: AsyncSession) -> None:
    tenant_id = await bare_tenant(session, "Vanished")
    keys = ring(("k1", K1))
    await audit.append(session, tenant_id=tenant_id, actor="t", action="x", target="1", keys=keys)
    await session.commit()
    [head] = await audit.heads(session, tenant_id=tenant_id)
    await as_owner(session, "DELETE FROM audit_log WHERE tenant_id = :t", {"t": tenant_id})
    anchored = {tenant_id: {1: audit.AnchoredEntry(head.mac, head.created_at)}}
    result = await audit.check(session, keys=keys, anchors=anchored)
    [gone] = [b for b in result.breaks if b.tenant_id == tenant_id]
    assert gone.seq == 1 and gone.reason.endswith("the chain is empty")


async def test_a_bad_anchor_file_is_a_usage_error(
    session: AsyncSession, service_urls: ServiceUrls, tmp_path: Path
) -> None:
    broken = tmp_path / "anchors.jsonl"
    broken.write_text('{"tenant_id": "not a uuid", "seq": 1}\n')
    result = await herald("audit", "verify", "--anchors", str(broken), service_urls=service_urls)
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {broken}:1: not an anchor")
    missing = tmp_path / "nowhere.jsonl"
    result = await herald(
        "audit", "verify", service_urls=service_urls, HERALD_AUDIT_ANCHOR_FILE=str(missing)
    )
    assert result.returncode == 2
    assert f"error: {missing}: cannot be read" in result.stderr
    result = await herald("audit", "verify", "--tenant", "acme", service_urls=service_urls)
    assert result.returncode == 2 and "is not a valid UUID" in result.stderr


def test_anchor_files_refuse_conflicting_heads(tmp_path: Path) -> None:
    tenant = uuid.uuid4()
    path = tmp_path / "anchors.jsonl"
    line = {
        "tenant_id": str(tenant),
        "seq": 3,
        "mac": "a" * 64,
        "anchored_at": "2026-01-01T00:00:00+00:00",
    }
    path.write_text(json.dumps(line) + "\n\n" + json.dumps({**line, "mac": "b" * 64}) + "\n")
    with pytest.raises(
        anchors.AnchorFileError, match=r":3: tenant .* entry 3 was anchored with another MAC"
    ):
        anchors.read(path)
    path.write_text(json.dumps({**line, "anchored_at": "2026-01-01T00:00:00"}) + "\n")
    with pytest.raises(anchors.AnchorFileError, match="time zone"):
        anchors.read(path)


def test_the_mac_is_keyed() -> None:
    # The MAC is HMAC-SHA256 under a key derived from the configured one: nothing in the
    # row, or a plain hash of it, reproduces it.
    message = audit.mac_message(
        key_id="k1",
        prev_hash=audit.GENESIS,
        tenant_id=uuid.UUID(int=1),
        seq=1,
        actor="a",
        action="b",
        target="c",
        details={},
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    mac = ring(("k1", K1)).mac("k1", message)
    assert mac is not None and len(mac) == 64
    assert mac != hashlib.sha256(message).hexdigest()
    assert mac != ring(("k1", K2)).mac("k1", message)
