"""Accepting a notification: validate, write it in one transaction, honour idempotency keys.

The caller gets its 202 once the row is committed; nothing here talks to a provider.
The same Idempotency-Key with the same body returns the original notification; with a
different body it is refused.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import msgspec
from sqlalchemy import Table, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.keys import Principal
from app.categories import service as categories
from app.categories.rules import high_priority_refusal, rules_for
from app.db import utcnow
from app.ids import uuid7
from app.notifications.models import Notification
from app.notifications.schemas import MAX_DATA_BYTES, NotificationCreate
from app.observability.tracing import current_trace_context
from app.recipients import service as recipients
from app.recipients.schemas import RecipientInput
from app.recipients.validation import RecipientInvalid, normalise_external_id, normalise_locale
from app.templates.service import TemplateSummary, latest_summary

MAX_SCHEDULE_AHEAD = timedelta(days=90)
DEFAULT_CATEGORY = "transactional"


class InvalidNotification(ValueError):
    """The request cannot be accepted; `field` names the offending part of the body."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used before with a different request body."""

    def __init__(self, original_id: uuid.UUID) -> None:
        super().__init__(str(original_id))
        self.original_id = original_id


@dataclass(frozen=True)
class AcceptedNotification:
    """What the 202 answer and the enqueue need; read straight off the INSERT."""

    id: uuid.UUID
    status: str
    priority: str
    created_at: datetime
    send_at: datetime | None


@dataclass(frozen=True)
class Accepted:
    notification: AcceptedNotification
    replayed: bool


_CANONICAL = msgspec.json.Encoder(order="sorted")
_TABLE = cast(Table, Notification.__table__)
_ANSWER = (_TABLE.c.id, _TABLE.c.status, _TABLE.c.priority, _TABLE.c.created_at, _TABLE.c.send_at)


def request_hash(body: NotificationCreate) -> str:
    # Sorted keys: the same body sent with its members in another order is the same request.
    return hashlib.sha256(_CANONICAL.encode(body)).hexdigest()


async def accept(
    session: AsyncSession,
    *,
    principal: Principal,
    body: NotificationCreate,
    idempotency_key: str | None,
) -> Accepted:
    """Validate and store the notification; the caller commits and then enqueues dispatch."""
    digest = request_hash(body)
    if idempotency_key is not None:
        earlier = await _by_idempotency_key(session, principal, idempotency_key)
        if earlier is not None:
            return _replay(earlier, digest)
    values = await _validated_values(session, principal, body)
    # A Core insert: the ORM's bulk-insert machinery costs more than the statement itself.
    statement = insert(_TABLE).values(
        **values,
        idempotency_key=idempotency_key,
        request_hash=digest,
        trace_context=current_trace_context(),
    )
    if idempotency_key is not None:
        statement = statement.on_conflict_do_nothing(
            index_elements=[_TABLE.c.tenant_id, _TABLE.c.mode, _TABLE.c.idempotency_key]
        )
    inserted = (await session.execute(statement.returning(*_ANSWER))).first()
    if inserted is None:  # a concurrent request with the same key won the insert
        await session.rollback()
        assert idempotency_key is not None
        earlier = await _by_idempotency_key(session, principal, idempotency_key)
        assert earlier is not None
        return _replay(earlier, digest)
    return Accepted(notification=AcceptedNotification(*inserted), replayed=False)


def _replay(earlier: Notification, digest: str) -> Accepted:
    if earlier.request_hash != digest:
        raise IdempotencyConflict(earlier.id)
    answer = AcceptedNotification(*(getattr(earlier, column.key) for column in _ANSWER))
    return Accepted(notification=answer, replayed=True)


async def _by_idempotency_key(
    session: AsyncSession, principal: Principal, key: str
) -> Notification | None:
    """The notification holding the key; keys are per mode, like every other object."""
    found: Notification | None = await session.scalar(
        select(Notification).where(
            Notification.tenant_id == principal.tenant_id,
            Notification.mode == principal.mode,
            Notification.idempotency_key == key,
        )
    )
    return found


async def _validated_values(
    session: AsyncSession, principal: Principal, body: NotificationCreate
) -> dict[str, Any]:
    tenant_id, mode = principal.tenant_id, principal.mode
    template = await latest_summary(session, tenant_id=tenant_id, mode=mode, key=body.template)
    category_key = category_of(body, template)
    category = await categories.get_category(
        session, tenant_id=tenant_id, mode=mode, key=category_key
    )
    critical = None if category is None else category.critical
    row = notification_row(principal, body, template, category_critical=critical)
    row["audience"] = {"recipients": await _audience(session, principal, body.to)}
    return row


def category_of(body: NotificationCreate, template: TemplateSummary | None) -> str:
    return body.category or (template.category if template else None) or DEFAULT_CATEGORY


def notification_row(
    principal: Principal,
    body: NotificationCreate,
    template: TemplateSummary | None,
    *,
    category_critical: bool | None,
) -> dict[str, Any]:
    """The notifications row for a request, once its template and category were looked up
    (`category_critical` is None when the category does not exist).

    The audience holds the ids as given; inline recipients are the caller's to upsert.
    `high` priority is for critical categories only: the high queue is shared by every
    tenant, and what rides it must be what cannot wait (codes, resets, alerts).
    """
    if template is None:
        raise InvalidNotification(
            "template", f"no template {body.template!r} in {principal.mode} mode"
        )
    channels = _channels(body, template.channels)
    category_key = category_of(body, template)
    if category_critical is None:
        raise InvalidNotification(
            "category", f"no category {category_key!r} in {principal.mode} mode"
        )
    if body.priority == "high" and not rules_for(category_critical).may_be_high_priority:
        raise InvalidNotification("priority", high_priority_refusal(category_key))
    if len(msgspec.json.encode(body.data)) > MAX_DATA_BYTES:
        raise InvalidNotification("data", f"data is larger than {MAX_DATA_BYTES // 1024} KiB")
    ids = _audience_ids(body.to)
    return {
        "id": uuid7(),
        "tenant_id": principal.tenant_id,
        "api_key_id": principal.key_id,
        "mode": principal.mode,
        "template_key": template.key,
        "template_version": template.version,
        "category": category_key,
        "channels": channels,
        "audience": {"recipients": list(dict.fromkeys(ids))},
        "data": body.data,
        "locale": _locale(body.locale),
        "priority": body.priority,
        "send_at": _send_at(body.send_at),
        "status": "accepted",
        "created_at": utcnow(),
    }


def _audience_ids(to: list[str | RecipientInput]) -> list[str]:
    """The ids as given; a bare id must be one a recipient could have (`to[3]` names it).

    Inline recipients' ids are checked with the rest of them when they are upserted.
    """
    ids = []
    for index, item in enumerate(to):
        if isinstance(item, RecipientInput):
            ids.append(item.external_id)
            continue
        try:
            ids.append(normalise_external_id(item))
        except RecipientInvalid as invalid:
            raise InvalidNotification(f"to[{index}]", invalid.message) from None
    return ids


def _locale(locale: str | None) -> str | None:
    """Checked and stored as a recipient's locale is (`fr_ca` → `fr-CA`)."""
    if locale is None:
        return None
    try:
        return normalise_locale(locale)
    except RecipientInvalid as invalid:
        raise InvalidNotification("locale", invalid.message) from None


def _channels(body: NotificationCreate, available: list[str]) -> list[str]:
    if body.channels is None:
        return list(available)
    for index, channel in enumerate(body.channels):
        if channel not in available:
            raise InvalidNotification(
                f"channels[{index}]",
                f"template {body.template!r} has no {channel} content "
                f"(it has: {', '.join(available)})",
            )
    return list(dict.fromkeys(body.channels))


async def _audience(
    session: AsyncSession, principal: Principal, to: list[str | RecipientInput]
) -> list[str]:
    """External ids of the audience; inline recipients are upserted first, in one statement."""
    inline = [item for item in to if isinstance(item, RecipientInput)]
    if inline:
        try:
            await recipients.upsert_recipients(
                session, tenant_id=principal.tenant_id, mode=principal.mode, items=inline
            )
        except recipients.RecipientInvalid as invalid:
            index = to.index(inline[getattr(invalid, "index", 0)])
            raise InvalidNotification(f"to[{index}].{invalid.field}", str(invalid)) from None
    ids = [item if isinstance(item, str) else item.external_id for item in to]
    return list(dict.fromkeys(ids))


def _send_at(send_at: datetime | None) -> datetime | None:
    if send_at is None:
        return None
    if send_at.tzinfo is None:
        raise InvalidNotification(
            "send_at", "send_at needs a time zone offset, e.g. 2026-01-01T09:00:00Z"
        )
    now = datetime.now(UTC)
    if send_at > now + MAX_SCHEDULE_AHEAD:
        raise InvalidNotification("send_at", "send_at is more than 90 days ahead")
    return send_at if send_at > now else None
