"""The job functions that workers run; each calls domain services, never SQL of its own."""

from __future__ import annotations

import uuid
from typing import Any

from arq.typing import WorkerCoroutine

from app.delivery.service import Deliverer
from app.notifications.dispatch import dispatch as dispatch_notification
from jobs import queues


async def ping(ctx: dict[str, Any], token: str) -> str:
    """Round trip through a queue: proves a worker of that queue is consuming."""
    return f"pong:{token}"


async def dispatch(ctx: dict[str, Any], notification_id: str) -> int:
    """Fan a notification out into messages and enqueue their delivery; returns the batch count."""
    async with ctx["sessions"]() as session:
        batches = await dispatch_notification(session, notification_id=uuid.UUID(notification_id))
        await session.commit()
    for batch in batches:
        await queues.enqueue_delivery(ctx["redis"], batch.priority, batch.message_ids)
    return len(batches)


async def deliver(ctx: dict[str, Any], message_ids: list[str], priority: str) -> int:
    """Send one batch of messages; schedule the ones to try again. Returns the count sent on."""
    deliverer: Deliverer = ctx["deliverer"]
    ids = [uuid.UUID(message_id) for message_id in message_ids]
    retries = await deliverer.deliver(ids)
    for retry in retries:
        await queues.enqueue_retry(
            ctx["redis"], priority, retry.message_id, retry.attempt, retry.at
        )
    return len(ids)


FUNCTIONS: list[WorkerCoroutine] = [ping, dispatch, deliver]
