"""Appending to the audit log and verifying its chains.

Each tenant's entries form a chain. An entry stores the MAC of the previous entry of its
tenant (`prev_hash`) and its own (`hash`): HMAC-SHA256, under a key of HERALD_AUDIT_KEYS
whose id it records, of its fields, that previous MAC and the key id. The key lives outside
the database, so someone who can write the table can neither edit, insert nor reorder
entries, nor recompute a chain, without `verify` reporting the first entry that no longer
matches. What a chain cannot show by itself is that its newest entries were deleted: for
that, `heads` are exported as anchors to keep elsewhere (app/audit/anchors.py), and `verify`
given anchors reports an anchored entry that is missing or changed.

Legacy entries, written before migration 0011, are plain SHA-256 without a key (key_id
NULL). They are kept as they are — the table is append-only, and re-signing them would bless
whatever was done to them before — and checked as before, but only as the start of a chain:
`herald migrate` seals every chain whose newest entry is legacy with a keyed entry
(`audit.chain_keyed`) whose MAC covers the last legacy hash. From then on, rewriting the
legacy prefix changes that hash; and a legacy entry after a keyed one, or a chain that ends
in a legacy entry, is a break: that is what a chain rewritten without the key looks like.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.models import AuditEntry
from app.crypto import MacKeyring, default_audit_keys
from app.db import utcnow

GENESIS = "0" * 64
SEAL_ACTION = "audit.chain_keyed"
MAC_VERSION = "herald-audit-v2"


def _canonical(
    *,
    tenant_id: uuid.UUID,
    seq: int,
    actor: str,
    action: str,
    target: str,
    details: dict[str, Any],
    created_at: datetime,
) -> str:
    return json.dumps(
        [str(tenant_id), seq, actor, action, target, details, created_at.isoformat()],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )


def legacy_hash(*, prev_hash: str, **fields: Any) -> str:
    """How entries were chained before 0011: SHA-256, no key."""
    return hashlib.sha256(f"{prev_hash}:{_canonical(**fields)}".encode()).hexdigest()


def mac_message(*, key_id: str, prev_hash: str, **fields: Any) -> bytes:
    """What an entry's MAC covers: the format version, key id, previous MAC and fields."""
    return f"{MAC_VERSION}:{key_id}:{prev_hash}:{_canonical(**fields)}".encode()


async def append(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    actor: str,
    action: str,
    target: str,
    details: dict[str, Any] | None = None,
    keys: MacKeyring | None = None,
) -> AuditEntry:
    """Append one entry in the caller's transaction; concurrent appends of a tenant queue up.

    Signed with the process's audit keys (HERALD_AUDIT_KEYS) unless `keys` are given.
    """
    ring = keys or default_audit_keys()
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
    key_id, mac = ring.sign(mac_message(key_id=ring.current_key_id, prev_hash=prev_hash, **fields))
    entry = AuditEntry(**fields, prev_hash=prev_hash, hash=mac, key_id=key_id)
    session.add(entry)
    await session.flush()
    return entry


@dataclass(frozen=True)
class ChainBreak:
    tenant_id: uuid.UUID
    seq: int
    reason: str


@dataclass(frozen=True)
class AnchoredEntry:
    """What an anchor says an entry was: its MAC, and when that was exported."""

    mac: str
    anchored_at: datetime


@dataclass
class Verification:
    """The first break of each broken chain, and what was checked."""

    breaks: list[ChainBreak] = field(default_factory=list)
    chains: int = 0
    entries: int = 0
    legacy_entries: int = 0
    anchored_entries: int = 0


Anchors = Mapping[uuid.UUID, Mapping[int, AnchoredEntry]]


async def verify(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID | None = None,
    keys: MacKeyring | None = None,
    anchors: Anchors | None = None,
) -> list[ChainBreak]:
    """The first break of each broken chain (or of one tenant's); [] when all is intact."""
    result = await check(session, tenant_id=tenant_id, keys=keys, anchors=anchors)
    return result.breaks


async def check(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID | None = None,
    keys: MacKeyring | None = None,
    anchors: Anchors | None = None,
) -> Verification:
    """Check every chain (or one tenant's) and, given anchors, every anchored entry."""
    ring = keys or default_audit_keys()
    wanted = {
        tenant: entries
        for tenant, entries in (anchors or {}).items()
        if tenant_id is None or tenant == tenant_id
    }
    result = Verification()
    query = select(AuditEntry).order_by(AuditEntry.tenant_id, AuditEntry.seq)
    if tenant_id is not None:
        query = query.where(AuditEntry.tenant_id == tenant_id)
    chain: _Chain | None = None
    # populate_existing: entries this session loaded before are read again, not trusted.
    options = {"yield_per": 1000, "populate_existing": True}
    async for entry in await session.stream_scalars(query.execution_options(**options)):
        if chain is None or entry.tenant_id != chain.tenant_id:
            if chain is not None:
                chain.finish(result)
            chain = _Chain(entry.tenant_id, ring, wanted.pop(entry.tenant_id, {}))
        chain.add(entry)
        result.entries += 1
        result.legacy_entries += entry.key_id is None
    if chain is not None:
        chain.finish(result)
    # Anchored chains with no entry left at all: every anchored entry was deleted.
    for tenant, anchored in sorted(wanted.items()):
        if anchored:
            _Chain(tenant, ring, anchored).finish(result)
    return result


class _Chain:
    """One tenant's chain, checked entry by entry in order of seq."""

    def __init__(
        self, tenant_id: uuid.UUID, ring: MacKeyring, anchored: Mapping[int, AnchoredEntry]
    ) -> None:
        self.tenant_id = tenant_id
        self.ring = ring
        self.anchored = anchored
        self.prev_hash, self.next_seq = GENESIS, 1
        self.keyed = False  # a keyed entry was seen: legacy ones may no longer follow
        self.broken: ChainBreak | None = None

    def add(self, entry: AuditEntry) -> None:
        if self.broken is not None:
            return
        reason = self._check(entry)
        if reason is not None:
            self.broken = ChainBreak(self.tenant_id, entry.seq, reason)
            return
        self.prev_hash, self.next_seq = entry.hash, entry.seq + 1
        self.keyed = self.keyed or entry.key_id is not None

    def _check(self, entry: AuditEntry) -> str | None:
        if entry.seq != self.next_seq:
            return f"entry {self.next_seq} is missing"
        if entry.prev_hash != self.prev_hash:
            return "previous hash does not match the previous entry"
        fields: dict[str, Any] = {
            "prev_hash": entry.prev_hash,
            "tenant_id": entry.tenant_id,
            "seq": entry.seq,
            "actor": entry.actor,
            "action": entry.action,
            "target": entry.target,
            "details": entry.details,
            "created_at": entry.created_at,
        }
        if entry.key_id is None:
            if self.keyed:
                return "entry has no key (a legacy entry) but follows keyed entries"
            if legacy_hash(**fields) != entry.hash:
                return "contents do not match the stored hash"
        else:
            mac = self.ring.mac(entry.key_id, mac_message(key_id=entry.key_id, **fields))
            if mac is None:
                return f"signed with key {entry.key_id!r}, which HERALD_AUDIT_KEYS does not hold"
            if not hmac.compare_digest(mac, entry.hash):
                return "contents do not match the stored MAC"
        anchor = self.anchored.get(entry.seq)
        if anchor is not None and not hmac.compare_digest(anchor.mac, entry.hash):
            return f"entry differs from its anchor of {anchor.anchored_at.isoformat()}"
        return None

    def finish(self, result: Verification) -> None:
        result.chains += self.next_seq > 1 or self.broken is not None
        result.anchored_entries += len(self.anchored)
        if self.broken is None:
            self.broken = self._end_break()
        if self.broken is not None:
            result.breaks.append(self.broken)

    def _end_break(self) -> ChainBreak | None:
        last = self.next_seq - 1
        beyond = sorted(seq for seq in self.anchored if seq > last)
        if beyond:
            anchor = self.anchored[beyond[0]]
            return ChainBreak(
                self.tenant_id,
                beyond[0],
                f"anchored entry is missing (anchored {anchor.anchored_at.isoformat()}); "
                + (f"the chain now ends at entry {last}" if last else "the chain is empty"),
            )
        if last and not self.keyed:
            return ChainBreak(
                self.tenant_id,
                last,
                "the newest entry has no key: a chain of legacy entries must end in a keyed "
                "one (`herald migrate` seals it)",
            )
        return None


@dataclass(frozen=True)
class Head:
    """The newest entry of a tenant's chain: what an anchor records."""

    tenant_id: uuid.UUID
    seq: int
    mac: str
    key_id: str | None
    created_at: datetime


async def heads(session: AsyncSession, *, tenant_id: uuid.UUID | None = None) -> list[Head]:
    """Each chain's newest entry (or one tenant's), by tenant id."""
    newest = select(AuditEntry.tenant_id, func.max(AuditEntry.seq).label("seq")).group_by(
        AuditEntry.tenant_id
    )
    if tenant_id is not None:
        newest = newest.where(AuditEntry.tenant_id == tenant_id)
    latest = newest.subquery()
    # Both halves read the (tenant_id, seq) unique index.
    query = (
        select(
            AuditEntry.tenant_id,
            AuditEntry.seq,
            AuditEntry.hash,
            AuditEntry.key_id,
            AuditEntry.created_at,
        )
        .join(
            latest,
            (AuditEntry.tenant_id == latest.c.tenant_id) & (AuditEntry.seq == latest.c.seq),
        )
        .order_by(AuditEntry.tenant_id)
    )
    return [Head(*row) for row in (await session.execute(query)).all()]


async def seal_legacy_chains(session: AsyncSession, *, keys: MacKeyring | None = None) -> int:
    """Append a keyed entry to every chain whose newest entry is legacy; how many there were.

    Idempotent: a sealed chain ends in a keyed entry and is left alone next time. Each seal
    is appended (and its tenant's lock released) in a transaction of its own.
    """
    sealed = 0
    for head in await heads(session):
        if head.key_id is not None:
            continue
        await append(
            session,
            tenant_id=head.tenant_id,
            actor="cli",
            action=SEAL_ACTION,
            target="audit_log",
            details={"legacy_entries": head.seq},
            keys=keys,
        )
        await session.commit()
        sealed += 1
    return sealed


@dataclass(frozen=True)
class EntryPage:
    entries: list[AuditEntry]
    next_before: int | None  # the seq to continue below, when there are more


async def list_entries(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    limit: int,
    before: int | None = None,
    actor: str | None = None,
    action: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> EntryPage:
    """The tenant's entries newest first, below seq `before`, filtered by exact actor, action
    prefix (`webhook_endpoint.` finds every endpoint change) and time.

    Reads the (tenant_id, seq) unique index backwards and checks the filters on the rows it
    yields: a tenant's log is its members' and operators' changes, not its traffic, so the
    scan is bounded by the tenant's own history.
    """
    query = select(AuditEntry).where(AuditEntry.tenant_id == tenant_id)
    if before is not None:
        query = query.where(AuditEntry.seq < before)
    if actor:
        query = query.where(AuditEntry.actor == actor)
    if action:
        query = query.where(AuditEntry.action.startswith(action, autoescape=True))
    if since is not None:
        query = query.where(AuditEntry.created_at >= since)
    if until is not None:
        query = query.where(AuditEntry.created_at < until)
    rows = list(
        (await session.scalars(query.order_by(AuditEntry.seq.desc()).limit(limit + 1))).all()
    )
    more = len(rows) > limit
    rows = rows[:limit]
    return EntryPage(rows, rows[-1].seq if more and rows else None)


@dataclass(frozen=True)
class ChainState:
    """What checking a tenant's newest entries found.

    `first_seq`..`last_seq` were checked: each entry's MAC under HERALD_AUDIT_KEYS, its link
    to the entry before it and the numbering. `complete` when that is the whole chain (the
    window reached entry 1); otherwise the older entries were not looked at here, and the
    full check is `check` (or `herald audit verify`). `broken` is the first break found.
    """

    first_seq: int
    last_seq: int
    complete: bool
    broken: ChainBreak | None

    @property
    def empty(self) -> bool:
        return self.last_seq == 0


async def check_recent(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    limit: int,
    keys: MacKeyring | None = None,
) -> ChainState:
    """Check the newest `limit` entries of the tenant's chain (all of it when it is no
    longer), so that a page showing the chain's state costs a bounded read.

    The entry just before the window is taken as it is: its MAC is what the window's first
    entry must point to, and whether it holds is for a check of the older entries to say.
    """
    ring = keys or default_audit_keys()
    newest = await session.scalar(
        select(func.max(AuditEntry.seq)).where(AuditEntry.tenant_id == tenant_id)
    )
    if newest is None:
        return ChainState(0, 0, True, None)
    base = max(newest - limit, 0)  # the entry before the window; 0: the genesis
    # Plain rows, not entities: the check reads each field once, and a page view should not
    # pay for 1,000 mapped objects. They carry the entity's attribute names (_Chain reads
    # those), and the database's values whatever the session loaded before.
    rows: list[Any] = list(
        await session.execute(
            select(*AuditEntry.__table__.columns)
            .where(AuditEntry.tenant_id == tenant_id, AuditEntry.seq >= base)
            .order_by(AuditEntry.seq)
        )
    )
    chain = _Chain(tenant_id, ring, {})
    if base > 0:
        if rows and rows[0].seq == base:
            before = rows.pop(0)
            chain.prev_hash, chain.keyed = before.hash, before.key_id is not None
            chain.next_seq = base + 1
        else:
            chain.prev_hash, chain.next_seq = "", base  # the entry before is missing
    for entry in rows:
        chain.add(entry)
    result = Verification()
    chain.finish(result)
    return ChainState(
        first_seq=base + 1,
        last_seq=newest,
        complete=base == 0,
        broken=result.breaks[0] if result.breaks else None,
    )
