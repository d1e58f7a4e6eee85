"""Suppressions: addresses a tenant must not send to on a channel, whatever the category.

Providers' bounce and complaint reports add them (add_suppressions), tenants add and remove
them by hand. Addresses are stored in the form `suppression_key` gives, and looked up in it.
Suppressions belong to a mode: a live bounce protects live sends, and a test key can neither
read nor lift a live suppression.

An erased recipient's suppressed addresses are kept as keyed digests (`erased:<hex>`, see
app/crypto.py) instead: nobody can read them back, yet every lookup of the address still
matches, so an erased person who bounced or complained is never mailed again.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from sqlalchemy import ARRAY, String, any_, bindparam, delete, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit import service as audit
from app.auth import roles
from app.channels import CHANNELS
from app.crypto import Keyring, default_keyring
from app.db import WAS_INSERTED
from app.ids import uuid7
from app.pagination import Page, keyset_page
from app.recipients.models import SUPPRESSION_REASONS, Suppression
from app.recipients.validation import ERASED_PREFIX, check_suppression_address, suppression_key

MAX_ADDRESS = 2048
MAX_SOURCE = 200


def _digest_input(tenant_id: uuid.UUID, channel: str, key: str) -> bytes:
    # The tenant is part of it: the same address erased in two tenants cannot be linked.
    return f"suppression\x00{tenant_id}\x00{channel}\x00{key}".encode()


def erased_form(tenant_id: uuid.UUID, channel: str, key: str, keyring: Keyring) -> str:
    """How a suppression key is stored once its owner is erased (current key)."""
    return ERASED_PREFIX + keyring.digest(_digest_input(tenant_id, channel, key))


def _stored_forms(tenant_id: uuid.UUID, channel: str, key: str, keyring: Keyring) -> list[str]:
    """Every form in which a suppression key may be stored: as is, or as an erased digest."""
    digests = keyring.digests(_digest_input(tenant_id, channel, key))
    return [key, *(ERASED_PREFIX + digest for digest in digests)]


def _check_entry(channel: str, address: str, reason: str) -> None:
    if channel not in CHANNELS:
        raise ValueError(f"unknown channel {channel!r}")
    if reason not in SUPPRESSION_REASONS:
        raise ValueError(f"unknown suppression reason {reason!r}")
    if not address.strip() or len(address) > MAX_ADDRESS:
        raise ValueError(f"a suppressed address has 1 to {MAX_ADDRESS} characters")


async def add_suppressions(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    mode: str,
    entries: list[tuple[str, str, str, str]],
    erased: bool = False,
    keyring: Keyring | None = None,
) -> set[tuple[str, str]]:
    """Suppress (channel, address, reason, source) entries in one statement; known ones stay.
    Which (channel, suppression key) were not suppressed before.

    `erased`: the addresses belong to an erased recipient and are stored as digests.
    """
    ring = (keyring or default_keyring()) if erased else None
    rows: list[dict[str, object]] = []
    for channel, address, reason, source in entries:
        _check_entry(channel, address, reason)
        key = suppression_key(channel, address)
        rows.append(
            {
                "id": uuid7(),
                "tenant_id": tenant_id,
                "mode": mode,
                "channel": channel,
                "address": key if ring is None else erased_form(tenant_id, channel, key, ring),
                "reason": reason,
                "source": source[:MAX_SOURCE] or "unknown",
            }
        )
    if not rows:
        return set()
    # One order for every writer, so that concurrent reports cannot deadlock on each other.
    rows.sort(key=lambda row: (str(row["channel"]), str(row["address"])))
    inserted = await session.execute(
        pg_insert(Suppression)
        .values(rows)
        .on_conflict_do_nothing()
        .returning(Suppression.channel, Suppression.address)
    )
    return {(channel, address) for channel, address in inserted}


async def add_suppression(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    mode: str,
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
        tenant_id=tenant_id, mode=mode, channel=channel, address=key, reason=reason, source=source
    )
    # A no-op update, so that the existing row comes back from the same statement.
    upsert = statement.on_conflict_do_update(
        index_elements=[
            Suppression.tenant_id,
            Suppression.mode,
            Suppression.channel,
            Suppression.address,
        ],
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
            details={"channel": channel, "reason": reason, "mode": mode},
        )
    return row, bool(created)


async def list_suppressions(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    mode: str,
    limit: int,
    cursor: uuid.UUID | None = None,
    channel: str | None = None,
    address: str | None = None,
    keyring: Keyring | None = None,
) -> Page[Suppression]:
    """The tenant's suppressions, newest first; `address` also finds an erased one's digest."""
    query = select(Suppression).where(Suppression.tenant_id == tenant_id, Suppression.mode == mode)
    if channel is not None:
        query = query.where(Suppression.channel == channel)
    if address is not None:
        ring = keyring or default_keyring()
        keys = {
            form
            for c in ([channel] if channel else CHANNELS)
            for form in _stored_forms(tenant_id, c, suppression_key(c, address), ring)
        }
        query = query.where(Suppression.address.in_(sorted(keys)))
    return await keyset_page(session, query, Suppression.id, limit=limit, cursor=cursor)


async def remove_suppression(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    mode: str,
    suppression_id: uuid.UUID,
    actor: str,
    role: str | None = None,
) -> Suppression | None:
    """Lift a suppression; None when the tenant has none of that id in that mode.

    `role`: the acting member's (app/auth/roles.py); None for an API key."""
    roles.require(role, "manage_recipients")
    removed: Suppression | None = await session.scalar(
        delete(Suppression)
        .where(
            Suppression.tenant_id == tenant_id,
            Suppression.mode == mode,
            Suppression.id == suppression_id,
        )
        .returning(Suppression)
    )
    if removed is not None:
        await audit.append(
            session,
            tenant_id=tenant_id,
            actor=actor,
            action="suppression.removed",
            target=str(suppression_id),
            details={"channel": removed.channel, "reason": removed.reason, "mode": mode},
        )
    return removed


MAX_SHOWN = 100  # suppressions listed for one recipient (each address has a few at most)


async def suppressions_for(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    mode: str,
    addresses: Iterable[tuple[str, str]],
    keyring: Keyring | None = None,
) -> list[Suppression]:
    """The suppressions of these (channel, address) pairs (a recipient's addresses), newest
    first, at most MAX_SHOWN, in one query: every column of the unique key (tenant_id, mode,
    channel, address) is bound, so it is the index taken (an ORDER BY id would open
    ix_suppressions_tenant_id_mode_id, a walk through all of the tenant's suppressions)."""
    ring = keyring or default_keyring()
    forms = {
        (channel, form)
        for channel, address in addresses
        if address
        for form in _stored_forms(tenant_id, channel, suppression_key(channel, address), ring)
    }
    if not forms:
        return []
    channels = sorted({channel for channel, _ in forms})
    stored = sorted({form for _, form in forms})
    rows = await session.scalars(
        select(Suppression).where(
            Suppression.tenant_id == tenant_id,
            Suppression.mode == mode,
            Suppression.channel == any_(bindparam("channels", channels, type_=ARRAY(String))),
            Suppression.address == any_(bindparam("addresses", stored, type_=ARRAY(String))),
        )
    )
    found = [row for row in rows if (row.channel, row.address) in forms]
    return sorted(found, key=lambda row: row.id, reverse=True)[:MAX_SHOWN]


async def suppressed(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    mode: str,
    pairs: Iterable[tuple[str, str]],
    keyring: Keyring | None = None,
) -> set[tuple[str, str]]:
    """Which (channel, suppression key) pairs are suppressed, in one query (erased ones too)."""
    ring = keyring or default_keyring()
    by_form: dict[tuple[str, str], tuple[str, str]] = {}
    for channel, key in set(pairs):
        for form in _stored_forms(tenant_id, channel, key, ring):
            by_form[(channel, form)] = (channel, key)
    if not by_form:
        return set()
    channels = sorted({channel for channel, _ in by_form})
    addresses = sorted({form for _, form in by_form})
    rows = await session.execute(
        select(Suppression.channel, Suppression.address).where(
            Suppression.tenant_id == tenant_id,
            Suppression.mode == mode,
            Suppression.channel == any_(bindparam("channels", channels, type_=ARRAY(String))),
            Suppression.address == any_(bindparam("addresses", addresses, type_=ARRAY(String))),
        )
    )
    return {by_form[key] for key in map(tuple, rows) if key in by_form}


# A suppression whose digest is already stored (the address was erased before, and suppressed
# again since) is dropped rather than renamed: the pair is unique per tenant and mode.
_DROP_DUPLICATES = text(
    """
    DELETE FROM suppressions AS s
     USING unnest(CAST(:channels AS text[]), CAST(:keys AS text[]), CAST(:forms AS text[]))
           AS e(channel, key, form)
     WHERE s.tenant_id = :tenant_id AND s.mode = :mode AND s.channel = e.channel
       AND s.address = e.key
       AND EXISTS (SELECT 1 FROM suppressions AS d
                    WHERE d.tenant_id = :tenant_id AND d.mode = :mode AND d.channel = e.channel
                      AND d.address = e.form)
    """
)
_TO_DIGESTS = text(
    """
    UPDATE suppressions AS s
       SET address = e.form
      FROM unnest(CAST(:channels AS text[]), CAST(:keys AS text[]), CAST(:forms AS text[]))
           AS e(channel, key, form)
     WHERE s.tenant_id = :tenant_id AND s.mode = :mode AND s.channel = e.channel
       AND s.address = e.key
    """
)


async def hide_addresses(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    mode: str,
    addresses: Iterable[tuple[str, str]],
    keyring: Keyring | None = None,
) -> None:
    """Replace the suppressions of these (channel, address) pairs by their erased digests.

    The rows keep their id, reason, source and date: they go on protecting the address.
    """
    ring = keyring or default_keyring()
    keys = sorted({(channel, suppression_key(channel, a)) for channel, a in addresses if a})
    if not keys:
        return
    params = {
        "tenant_id": tenant_id,
        "mode": mode,
        "channels": [channel for channel, _ in keys],
        "keys": [key for _, key in keys],
        "forms": [erased_form(tenant_id, channel, key, ring) for channel, key in keys],
    }
    await session.execute(_DROP_DUPLICATES, params)
    await session.execute(_TO_DIGESTS, params)
