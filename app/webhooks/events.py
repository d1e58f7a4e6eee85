"""The events Herald sends to tenants' webhook endpoints: their types, and writing them.

Events are written to the `webhook_events` outbox by the transaction that makes the change
they describe (a message's outcome or receipt, a suppression, a completed or refused
notification), so that no committed change goes without its event and no rolled-back one
has one. Each write is one statement for a whole batch, and keeps only the events that some
endpoint of the tenant's mode wants (enabled, and subscribed to the type or to every type):
a tenant without endpoints pays one index probe per event, and stores nothing. The send
path's outcomes are the most frequent change: the outcome writer writes their events inside
its own UPDATE, with the SQL fragments below (app/delivery/outcomes.py).
app/webhooks/fanout.py turns the outbox into deliveries.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec
from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.ids import uuid7s

EVENT_TYPES = (
    "message.sent",
    "message.delivered",
    "message.bounced",
    "message.complained",
    "message.failed",
    "message.opened",
    "message.clicked",
    "notification.completed",
    "notification.refused",
    "recipient.unsubscribed",
    "recipient.suppressed",
)

# A message status → the event announcing it. `undelivered` (an SMS the carrier gave up on)
# is a failure to the tenant; its event says which status it was.
MESSAGE_EVENT_OF_STATUS = {
    "sent": "message.sent",
    "delivered": "message.delivered",
    "bounced": "message.bounced",
    "complained": "message.complained",
    "failed": "message.failed",
    "undelivered": "message.failed",
    "opened": "message.opened",
    "clicked": "message.clicked",
}


def event_id(value: uuid.UUID) -> str:
    return f"evt_{value.hex}"


@dataclass(frozen=True)
class Event:
    tenant_id: uuid.UUID
    mode: str
    type: str
    ordering_key: str  # events of one key reach an endpoint in the order written
    data: dict[str, Any]


@dataclass(frozen=True)
class MessageEvent:
    """An event about a message, whose data is read from the message as it is now."""

    message_id: uuid.UUID
    type: str
    extra: dict[str, Any] = field(default_factory=dict)  # added to the data (reason, url…)


@dataclass(frozen=True)
class RecipientEvent:
    """An event about a recipient; its data gains the recipient's own id (external_id)."""

    recipient_id: uuid.UUID
    type: str
    data: dict[str, Any]


# A message's event data, built in SQL from the row `{m}` of messages (or of an UPDATE's
# RETURNING with the same columns) and `{r}` of recipients: status, provider and error as they
# now are, and the recipient's own id. Shared by record_messages and the outcome writer, which
# writes its events in its own UPDATE statement (app/delivery/outcomes.py).
MESSAGE_DATA_SQL = """
    jsonb_strip_nulls(jsonb_build_object(
        'message_id', {m}.id, 'notification_id', {m}.notification_id,
        'recipient', {r}.external_id, 'channel', {m}.channel, 'status', {m}.status,
        'provider', {m}.provider, 'provider_message_id', {m}.provider_message_id,
        'error_class', CASE WHEN {m}.status = 'failed' THEN {m}.error_class END,
        'error', CASE WHEN {m}.status = 'failed' THEN {m}.last_error END
    ))
"""
# Whether an endpoint wants an event of type `{type}` of the tenant and mode of `{m}`: of
# the tenant and mode, enabled, subscribed to the type or to every type. Every write of
# events keeps only those.
WANTED_SQL = """
    EXISTS (SELECT 1 FROM webhook_endpoints AS w
             WHERE w.tenant_id = {m}.tenant_id AND w.mode = {m}.mode AND w.enabled
               AND (w.event_types IS NULL OR {type} = ANY (w.event_types)))
"""

# Events of any kind, their data given.
_RECORD = text(
    f"""
    INSERT INTO webhook_events (event_id, tenant_id, mode, type, ordering_key, data, created_at)
    SELECT e.event_id, e.tenant_id, e.mode, e.type, e.ordering_key, e.data, :now
      FROM unnest(CAST(:event_id AS text[]), CAST(:tenant_id AS uuid[]), CAST(:mode AS text[]),
                  CAST(:type AS text[]), CAST(:ordering_key AS text[]), CAST(:data AS jsonb[]))
           WITH ORDINALITY AS e(event_id, tenant_id, mode, type, ordering_key, data, ord)
     WHERE {WANTED_SQL.format(m="e", type="e.type")}
     ORDER BY e.ord
    """  # noqa: S608 (the fragment is a constant)
)

# The messages' data is read in the statement, after the change it announces (same
# transaction).
_RECORD_MESSAGES = text(
    f"""
    INSERT INTO webhook_events (event_id, tenant_id, mode, type, ordering_key, data, created_at)
    SELECT e.event_id, m.tenant_id, m.mode, e.type, m.id::text,
           {MESSAGE_DATA_SQL.format(m="m", r="r")} || e.extra,
           :now
      FROM unnest(CAST(:event_id AS text[]), CAST(:message_id AS uuid[]), CAST(:type AS text[]),
                  CAST(:extra AS jsonb[]))
           WITH ORDINALITY AS e(event_id, message_id, type, extra, ord)
      JOIN messages AS m ON m.id = e.message_id
      LEFT JOIN recipients AS r ON r.id = m.recipient_id
     WHERE {WANTED_SQL.format(m="m", type="e.type")}
     ORDER BY e.ord
    """  # noqa: S608 (the fragments are constants)
)


_RECORD_RECIPIENTS = text(
    f"""
    INSERT INTO webhook_events (event_id, tenant_id, mode, type, ordering_key, data, created_at)
    SELECT e.event_id, r.tenant_id, r.mode, e.type, r.id::text,
           jsonb_build_object('recipient', r.external_id) || e.data, :now
      FROM unnest(CAST(:event_id AS text[]), CAST(:recipient_id AS uuid[]),
                  CAST(:type AS text[]), CAST(:data AS jsonb[]))
           WITH ORDINALITY AS e(event_id, recipient_id, type, data, ord)
      JOIN recipients AS r ON r.id = e.recipient_id
     WHERE {WANTED_SQL.format(m="r", type="e.type")}
     ORDER BY e.ord
    """  # noqa: S608 (the fragment is a constant)
)


async def _write(
    session: AsyncSession,
    statement: TextClause,
    count: int,
    now: datetime,
    columns: dict[str, list[Any]],
) -> None:
    """Run one of the statements above for `count` events, each with a new event id."""
    if not count:
        return
    ids = [event_id(i) for i in uuid7s(count)]
    await session.execute(statement, {"event_id": ids, "now": now, **columns})


def _json(data: dict[str, Any]) -> str:
    return msgspec.json.encode(data).decode()


async def record(session: AsyncSession, events: Sequence[Event], now: datetime) -> None:
    """Write the events some endpoint wants, in the given order, in one statement."""
    await _write(
        session,
        _RECORD,
        len(events),
        now,
        {
            "tenant_id": [e.tenant_id for e in events],
            "mode": [e.mode for e in events],
            "type": [e.type for e in events],
            "ordering_key": [e.ordering_key for e in events],
            "data": [_json(e.data) for e in events],
        },
    )


async def record_messages(
    session: AsyncSession, events: Sequence[MessageEvent], now: datetime
) -> None:
    """Write the events about messages some endpoint wants, after the changes they announce
    (the caller has changed, and so locked, the messages in this transaction)."""
    await _write(
        session,
        _RECORD_MESSAGES,
        len(events),
        now,
        {
            "message_id": [e.message_id for e in events],
            "type": [e.type for e in events],
            "extra": [_json(e.extra) for e in events],
        },
    )


async def record_recipients(
    session: AsyncSession, events: Sequence[RecipientEvent], now: datetime
) -> None:
    """Write the events about recipients some endpoint wants, in one statement."""
    await _write(
        session,
        _RECORD_RECIPIENTS,
        len(events),
        now,
        {
            "recipient_id": [e.recipient_id for e in events],
            "type": [e.type for e in events],
            "data": [_json(e.data) for e in events],
        },
    )
