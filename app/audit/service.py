"""Appending to the audit log and verifying its hash chain.

Each row stores the hash of the previous row of its tenant; a row's hash covers its own
fields and that previous hash, so editing, deleting or reordering any row breaks the chain
from there on, which `verify` reports.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.models import AuditEntry
from app.db import utcnow

GENESIS = "0" * 64


def entry_hash(
    *,
    prev_hash: str,
    tenant_id: uuid.UUID,
    seq: int,
    actor: str,
    action: str,
    target: str,
    details: dict[str, Any],
    created_at: datetime,
) -> str:
    canonical = json.dumps(
        [str(tenant_id), seq, actor, action, target, details, created_at.isoformat()],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(f"{prev_hash}:{canonical}".encode()).hexdigest()


async def append(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    actor: str,
    action: str,
    target: str,
    details: dict[str, Any] | None = None,
) -> AuditEntry:
    """Append one entry in the caller's transaction; concurrent appends of a tenant queue up."""
    # A transaction-scoped advisory lock per tenant keeps the chain linear under concurrency.
    await session.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
        {"key": f"audit:{tenant_id}"},
    )
    last = (
        await session.execute(
            select(AuditEntry.seq, AuditEntry.hash)
            .where(AuditEntry.tenant_id == tenant_id)
            .order_by(AuditEntry.seq.desc())
            .limit(1)
        )
    ).first()
    seq, prev_hash = (last[0] + 1, last[1]) if last else (1, GENESIS)
    fields: dict[str, Any] = {
        "tenant_id": tenant_id,
        "seq": seq,
        "actor": actor,
        "action": action,
        "target": target,
        "details": details or {},
        "created_at": utcnow(),
    }
    entry = AuditEntry(
        **fields, prev_hash=prev_hash, hash=entry_hash(prev_hash=prev_hash, **fields)
    )
    session.add(entry)
    await session.flush()
    return entry


@dataclass(frozen=True)
class ChainBreak:
    tenant_id: uuid.UUID
    seq: int
    reason: str


async def verify(session: AsyncSession, *, tenant_id: uuid.UUID | None = None) -> list[ChainBreak]:
    """Recompute every chain (or one tenant's); return the first break of each broken chain."""
    query = select(AuditEntry).order_by(AuditEntry.tenant_id, AuditEntry.seq)
    if tenant_id is not None:
        query = query.where(AuditEntry.tenant_id == tenant_id)
    breaks: list[ChainBreak] = []
    current: uuid.UUID | None = None
    prev_hash, expected_seq, broken = GENESIS, 1, False
    async for entry in await session.stream_scalars(query.execution_options(yield_per=1000)):
        if entry.tenant_id != current:
            current, prev_hash, expected_seq, broken = entry.tenant_id, GENESIS, 1, False
        if broken:
            continue
        reason = _check(entry, prev_hash, expected_seq)
        if reason:
            breaks.append(ChainBreak(entry.tenant_id, entry.seq, reason))
            broken = True
        prev_hash, expected_seq = entry.hash, entry.seq + 1
    return breaks


def _check(entry: AuditEntry, prev_hash: str, expected_seq: int) -> str | None:
    if entry.seq != expected_seq:
        return f"entry {expected_seq} is missing"
    if entry.prev_hash != prev_hash:
        return "previous hash does not match the previous entry"
    recomputed = entry_hash(
        prev_hash=entry.prev_hash,
        tenant_id=entry.tenant_id,
        seq=entry.seq,
        actor=entry.actor,
        action=entry.action,
        target=entry.target,
        details=entry.details,
        created_at=entry.created_at,
    )
    if recomputed != entry.hash:
        return "contents do not match the stored hash"
    return None
