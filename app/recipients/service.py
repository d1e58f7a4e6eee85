"""Recipients: atomic create-or-update (one or a batch), reads, erasure and template context.

This module is also the notification dispatcher's and the delivery path's one entry point into
the domain: it re-exports plan_deliveries (planning.py),
add_suppressions (suppressions.py), erase_recipient, erased_messages and ERASED_TEXT
(erasure.py). Every function takes the tenant and the mode (app/modes.py) and filters on both.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from msgspec import UNSET
from sqlalchemy import (
    ARRAY,
    String,
    bindparam,
    case,
    func,
    select,
)
from sqlalchemy.dialects.postgresql import Insert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from app.db import WAS_INSERTED
from app.ids import uuid7
from app.pagination import Page, keyset_page
from app.recipients import lookups
from app.recipients.erasure import ERASED_TEXT, erase_recipient, erased_messages
from app.recipients.models import Recipient
from app.recipients.planning import PlannedDelivery, plan_deliveries
from app.recipients.schemas import RecipientInput
from app.recipients.suppressions import add_suppressions
from app.recipients.validation import (
    MAX_BATCH,
    RecipientInvalid,
    normalise_data,
    normalise_email,
    normalise_external_id,
    normalise_locale,
    normalise_phone,
    normalise_push_tokens,
    normalise_timezone,
    normalise_url,
)

__all__ = [
    "ERASED_TEXT",
    "PlannedDelivery",
    "RecipientInput",
    "RecipientInvalid",
    "Upserted",
    "add_suppressions",
    "erase_recipient",
    "erased_messages",
    "get_by_external_ids",
    "get_recipient",
    "list_recipients",
    "plan_deliveries",
    "template_context",
    "upsert_recipients",
    "upsert_with_outcome",
]

MAX_REPORTED_ERRORS = 100

_NORMALISERS: dict[str, Callable[[Any], Any]] = {
    "email": normalise_email,
    "phone": normalise_phone,
    "push_tokens": normalise_push_tokens,
    "webhook_url": normalise_url,
    "locale": normalise_locale,
    "timezone": normalise_timezone,
    "data": normalise_data,
}
FIELDS = tuple(_NORMALISERS)


def _cleared(field: str) -> Any:
    """What null stores: the JSON columns hold an empty list/object rather than NULL."""
    return {"push_tokens": [], "data": {}}.get(field)


@dataclass(frozen=True)
class Upserted:
    recipient: Recipient
    created: bool


def normalise_input(item: RecipientInput) -> tuple[str, dict[str, Any]]:
    """The external id and the stored form of every field the item gives (null included)."""
    external_id = normalise_external_id(item.external_id)
    values: dict[str, Any] = {}
    for field, normalise in _NORMALISERS.items():
        value = getattr(item, field)
        if value is UNSET:
            continue
        values[field] = _cleared(field) if value is None else normalise(value)
    return external_id, values


def _validated(items: Sequence[RecipientInput]) -> dict[str, dict[str, Any]]:
    """Fields by external id; an id given twice is merged, the later item winning per field."""
    if len(items) > MAX_BATCH:
        # Also keeps the statement under PostgreSQL's 32,767 bind parameters.
        raise RecipientInvalid(
            "recipients",
            f"at most {MAX_BATCH:,} recipients at once (got {len(items):,}); "
            "split larger imports into several batches",
        )
    merged: dict[str, dict[str, Any]] = {}
    errors: list[RecipientInvalid] = []
    for index, item in enumerate(items):
        try:
            external_id, values = normalise_input(item)
        except RecipientInvalid as invalid:
            errors.append(RecipientInvalid(invalid.field, invalid.message, index))
            continue
        merged.setdefault(external_id, {}).update(values)
    if errors:
        first = errors[0]
        first.errors = errors[:MAX_REPORTED_ERRORS]
        raise first
    return merged


def _upsert_statement(tenant_id: uuid.UUID, mode: str, merged: dict[str, dict[str, Any]]) -> Insert:
    # Sorted, so that concurrent batches lock their rows in the same order (no deadlock).
    ordered = sorted(merged.items())
    rows = [
        {
            "id": uuid7(),
            "tenant_id": tenant_id,
            "mode": mode,
            "external_id": external_id,
            **{field: values.get(field, _cleared(field)) for field in FIELDS},
            # The database's clock for both, as for updates: created_at == updated_at when new.
            "created_at": func.now(),
            "updated_at": func.now(),
        }
        for external_id, values in ordered
    ]
    statement = pg_insert(Recipient).values(rows)
    excluded = statement.excluded
    assignments: dict[str, Any] = {"updated_at": func.now()}
    for field in FIELDS:
        given = [external_id for external_id, values in ordered if field in values]
        if len(given) == len(ordered):
            assignments[field] = excluded[field]
        elif given:
            assignments[field] = _given_or_kept(excluded, field, given)
    return statement.on_conflict_do_update(
        index_elements=[Recipient.tenant_id, Recipient.mode, Recipient.external_id],
        set_=assignments,
    )


def _given_or_kept(excluded: Any, field: str, given: list[str]) -> ColumnElement[Any]:
    """On conflict, the new value for rows whose item gave `field`, else the stored one.

    `IN (SELECT unnest(:ids))` is uncorrelated, so PostgreSQL hashes it once per statement.
    """
    ids = bindparam(f"given_{field}", given, type_=ARRAY(String))
    return case(
        (excluded.external_id.in_(select(func.unnest(ids))), excluded[field]),
        else_=getattr(Recipient, field),
    )


async def upsert_with_outcome(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    mode: str,
    items: Sequence[RecipientInput],
) -> list[Upserted]:
    """Create or update recipients in one statement, saying which were created."""
    merged = _validated(items)
    if not merged:
        return []
    statement = _upsert_statement(tenant_id, mode, merged).returning(Recipient, WAS_INSERTED)
    result = await session.execute(statement, execution_options={"populate_existing": True})
    by_id = {row[0].external_id: Upserted(row[0], bool(row[1])) for row in result.all()}
    # Not audited: recipient writes are data, at send-path volume; the audit log records
    # configuration and erasure, and its per-tenant lock would serialise intake.
    return [by_id[external_id] for external_id in merged]


async def upsert_recipients(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    mode: str,
    items: list[RecipientInput],
) -> list[Recipient]:
    """Create or update recipients in one statement; raises RecipientInvalid before any I/O."""
    outcome = await upsert_with_outcome(session, tenant_id=tenant_id, mode=mode, items=items)
    return [u.recipient for u in outcome]


async def get_recipient(
    session: AsyncSession, *, tenant_id: uuid.UUID, mode: str, external_id: str
) -> Recipient | None:
    recipient: Recipient | None = await session.scalar(
        lookups.one(tenant_id=tenant_id, mode=mode, external_id=external_id)
    )
    return None if recipient is None or recipient.erased_at is not None else recipient


async def get_by_external_ids(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    mode: str,
    external_ids: list[str],
    for_delivery: bool = False,
) -> list[Recipient]:
    """The tenant's live recipients with those ids, in the order asked; unknown ids skipped.

    `for_delivery` (dispatch): the rows are locked at the read, so that an erasure under way
    is waited for and its outcome seen. Found through the unique key alone (lookups.py)."""
    if not external_ids:
        return []
    query = lookups.many(
        tenant_id=tenant_id,
        mode=mode,
        external_ids=list(dict.fromkeys(external_ids)),
        lock=for_delivery,
    )
    found = await session.scalars(query)
    by_id = {r.external_id: r for r in found}
    return [by_id[e] for e in dict.fromkeys(external_ids) if e in by_id]


async def list_recipients(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    mode: str,
    limit: int,
    cursor: uuid.UUID | None = None,
    email: str | None = None,
    phone: str | None = None,
) -> Page[Recipient]:
    """Recipients not erased, newest first; `email` (any case) and `phone` are normalised first."""
    query = select(Recipient).where(
        Recipient.tenant_id == tenant_id, Recipient.mode == mode, Recipient.erased_at.is_(None)
    )
    if email is not None:
        query = query.where(func.lower(Recipient.email) == normalise_email(email).lower())
    if phone is not None:
        query = query.where(Recipient.phone == normalise_phone(phone))
    return await keyset_page(session, query, Recipient.id, limit=limit, cursor=cursor)


def template_context(recipient: Recipient) -> dict[str, Any]:
    """The `recipient` variable templates see; `id` is the tenant's own external id."""
    return {
        "id": recipient.external_id,
        "email": recipient.email,
        "phone": recipient.phone,
        "locale": recipient.locale,
        "timezone": recipient.timezone,
        "data": dict(recipient.data),
    }
