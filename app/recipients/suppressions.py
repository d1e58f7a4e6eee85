"""Suppressions: addresses a tenant must not send to on a channel, whatever the category.

Providers' bounce and complaint reports add them (add_suppressions), tenants add and remove
them by hand. Addresses are stored in the form `suppression_key` gives, and looked up in it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from sqlalchemy import ARRAY, String, any_, bindparam, delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit import service as audit
from app.channels import CHANNELS
from app.ids import uuid7
from app.pagination import Page, keyset_page
from app.recipients.models import SUPPRESSION_REASONS, WAS_INSERTED, Suppression
from app.recipients.validation import check_suppression_address, suppression_key

MAX_ADDRESS = 2048
MAX_SOURCE = 200


def _check_entry(channel: str, address: str, reason: str) -> None:
    if channel not in CHANNELS:
        raise ValueError(f"unknown channel {channel!r}")
    if reason not in SUPPRESSION_REASONS:
        raise ValueError(f"unknown suppression reason {reason!r}")
    if not address.strip() or len(address) > MAX_ADDRESS:
        raise ValueError(f"a suppressed address has 1 to {MAX_ADDRESS} characters")


async def add_suppressions(
    session: AsyncSession, *, tenant_id: uuid.UUID, entries: list[tuple[str, str, str, str]]
) -> None:
    """Suppress (channel, address, reason, source) entries in one statement; known ones stay."""
    rows: list[dict[str, object]] = []
    for channel, address, reason, source in entries:
        _check_entry(channel, address, reason)
        rows.append(
            {
                "id": uuid7(),
                "tenant_id": tenant_id,
                "channel": channel,
                "address": suppression_key(channel, address),
                "reason": reason,
                "source": source[:MAX_SOURCE] or "unknown",
            }
        )
    if not rows:
        return
    # One order for every writer, so that concurrent reports cannot deadlock on each other.
    rows.sort(key=lambda row: (str(row["channel"]), str(row["address"])))
    await session.execute(pg_insert(Suppression).values(rows).on_conflict_do_nothing())


async def add_suppression(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    channel: str,
    address: str,
    reason: str,
    source: str,
    actor: str,
) -> tuple[Suppression, bool]:
    """Suppress one address by hand (validated); True when it was not suppressed yet."""
    key = check_suppression_address(channel, address)
    _check_entry(channel, key, reason)
    statement = pg_insert(Suppression).values(
        tenant_id=tenant_id, channel=channel, address=key, reason=reason, source=source
    )
    # A no-op update, so that the existing row comes back from the same statement.
    upsert = statement.on_conflict_do_update(
        index_elements=[Suppression.tenant_id, Suppression.channel, Suppression.address],
        set_={"channel": statement.excluded.channel},
    ).returning(Suppression, WAS_INSERTED)
    row, created = (
        await session.execute(upsert, execution_options={"populate_existing": True})
    ).one()
    if created:
        # No address in the append-only log: it is personal data.
        await audit.append(
            session,
            tenant_id=tenant_id,
            actor=actor,
            action="suppression.added",
            target=str(row.id),
            details={"channel": channel, "reason": reason},
        )
    return row, bool(created)


async def list_suppressions(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    limit: int,
    cursor: uuid.UUID | None = None,
    channel: str | None = None,
    address: str | None = None,
) -> Page[Suppression]:
    query = select(Suppression).where(Suppression.tenant_id == tenant_id)
    if channel is not None:
        query = query.where(Suppression.channel == channel)
    if address is not None:
        keys = {suppression_key(c, address) for c in ([channel] if channel else CHANNELS)}
        query = query.where(Suppression.address.in_(sorted(keys)))
    return await keyset_page(session, query, Suppression.id, limit=limit, cursor=cursor)


async def remove_suppression(
    session: AsyncSession, *, tenant_id: uuid.UUID, suppression_id: uuid.UUID, actor: str
) -> Suppression | None:
    removed: Suppression | None = await session.scalar(
        delete(Suppression)
        .where(Suppression.tenant_id == tenant_id, Suppression.id == suppression_id)
        .returning(Suppression)
    )
    if removed is not None:
        await audit.append(
            session,
            tenant_id=tenant_id,
            actor=actor,
            action="suppression.removed",
            target=str(suppression_id),
            details={"channel": removed.channel, "reason": removed.reason},
        )
    return removed


async def suppressed(
    session: AsyncSession, *, tenant_id: uuid.UUID, pairs: Iterable[tuple[str, str]]
) -> set[tuple[str, str]]:
    """Which (channel, suppression key) pairs are suppressed, in one query."""
    wanted = set(pairs)
    if not wanted:
        return set()
    channels = sorted({channel for channel, _ in wanted})
    addresses = sorted({address for _, address in wanted})
    rows = await session.execute(
        select(Suppression.channel, Suppression.address).where(
            Suppression.tenant_id == tenant_id,
            Suppression.channel == any_(bindparam("channels", channels, type_=ARRAY(String))),
            Suppression.address == any_(bindparam("addresses", addresses, type_=ARRAY(String))),
        )
    )
    return {(channel, address) for channel, address in rows.tuples()} & wanted
