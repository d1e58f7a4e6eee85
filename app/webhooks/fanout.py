"""Turning the webhook_events outbox into deliveries, one batch of events at a time.

Each round takes the oldest events, writes a delivery per event and endpoint that wants it
(enabled, subscribed to the type or to every type), and deletes the events, in one
transaction: an event is delivered to every endpoint once, or, when the round fails, stays
for the next. One round runs at a time (a transaction-level advisory lock): rounds running
side by side could write a later event of a message before an earlier one, and the order
of a message's events per endpoint (app/webhooks/delivery.py) rests on the deliveries of
earlier events existing first.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, insert, select, text, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from app.ids import uuid7s
from app.tenants.models import Tenant
from app.tenants.plans import limits_for
from app.webhooks.models import WebhookDelivery, WebhookEndpoint, WebhookEvent

BATCH = 1_000  # events per round
# pg_advisory_xact_lock key of fan-out rounds ("herald:fanout" as an int64).
LOCK_KEY = 0x6865_7261_6C64_666F


async def fan_out(session: AsyncSession, now: datetime, *, limit: int = BATCH) -> int | None:
    """One round: the events taken (None when another round holds the lock). Commits."""
    if not await session.scalar(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": LOCK_KEY}):
        await session.rollback()
        return None
    events = list(
        await session.scalars(select(WebhookEvent).order_by(WebhookEvent.id).limit(limit))
    )
    if not events:
        await session.commit()
        return 0
    pairs = {(event.tenant_id, event.mode) for event in events}
    endpoints: dict[tuple[uuid.UUID, str], list[WebhookEndpoint]] = defaultdict(list)
    retention: dict[uuid.UUID, timedelta] = {}
    for endpoint, plan in await session.execute(
        select(WebhookEndpoint, Tenant.plan)
        .join(Tenant, Tenant.id == WebhookEndpoint.tenant_id)
        .where(
            WebhookEndpoint.enabled,
            tuple_(WebhookEndpoint.tenant_id, WebhookEndpoint.mode).in_(pairs),
        )
    ):
        endpoints[(endpoint.tenant_id, endpoint.mode)].append(endpoint)
        retention[endpoint.tenant_id] = timedelta(days=limits_for(plan).log_retention_days)
    rows: list[dict[str, Any]] = []
    for event in events:
        payload = {
            "id": event.event_id,
            "type": event.type,
            "timestamp": event.created_at.isoformat(),
            "data": event.data,
        }
        for endpoint in endpoints[(event.tenant_id, event.mode)]:
            if endpoint.event_types is None or event.type in endpoint.event_types:
                rows.append(
                    {
                        "tenant_id": event.tenant_id,
                        "mode": event.mode,
                        "endpoint_id": endpoint.id,
                        "event_id": event.event_id,
                        "event_type": event.type,
                        "ordering_key": event.ordering_key,
                        "event_seq": event.id,
                        "payload": payload,
                        "status": "pending",
                        "attempts": 0,
                        "next_attempt_at": now,
                        "created_at": now,
                        "updated_at": now,
                        "retain_until": now + retention[event.tenant_id],
                    }
                )
    for row, identifier in zip(rows, uuid7s(len(rows)), strict=True):
        row["id"] = identifier
    if rows:
        await session.execute(insert(WebhookDelivery), rows)
    await session.execute(
        delete(WebhookEvent).where(WebhookEvent.id.in_([event.id for event in events]))
    )
    await session.commit()
    return len(events)
