"""The job functions that workers run; each calls domain services, never SQL of its own."""

from __future__ import annotations

import uuid
from typing import Any

import structlog
from arq.typing import WorkerCoroutine

from app.delivery import outbox
from app.delivery.service import Deliverer
from app.notifications import failures
from app.notifications.dispatch import dispatch as dispatch_notification
from app.usage import recording
from jobs import queues

log = structlog.get_logger(__name__)


async def ping(ctx: dict[str, Any], token: str) -> str:
    """Round trip through a queue: proves a worker of that queue is consuming."""
    return f"pong:{token}"


async def dispatch(ctx: dict[str, Any], notification_id: str) -> int:
    """Fan a notification out into messages and enqueue their delivery; returns the batch count.

    The run is counted before it starts (a worker killed during it has counted it), and one
    run too many fails the notification instead (app/notifications/failures.py)."""
    structlog.contextvars.bind_contextvars(notification_id=notification_id)
    key = uuid.UUID(notification_id)
    async with ctx["sessions"]() as session:
        if not await failures.begin_attempt(session, notification_id=key):
            log.warning("dispatch given up: failed too many times")
            return 0
    try:
        async with ctx["sessions"]() as session:
            done = await dispatch_notification(
                session,
                notification_id=key,
                renderer=ctx["renderer"],
                enqueuer=queues.outbox(ctx["redis"]),
                meter=ctx.get("meter"),
            )
            await session.commit()
            await recording.record_committed(session, ctx.get("meter"))
    except Exception as error:
        async with ctx["sessions"]() as session:
            await failures.record_failure(session, notification_id=key, error=error)
        raise
    await queues.outbox(ctx["redis"]).enqueue(done.jobs(key))
    return len(done.batches)


async def deliver(
    ctx: dict[str, Any], message_ids: list[str], priority: str, returning: bool = False
) -> int:
    """Send one batch of messages; schedule the ones to run again. Returns the count asked.

    `returning`: a batch that waited for its turn at the token buckets."""
    deliverer: Deliverer = ctx["deliverer"]
    structlog.contextvars.bind_contextvars(message_ids=message_ids[:5], messages=len(message_ids))
    ids = [uuid.UUID(message_id) for message_id in message_ids]
    due = await deliverer.deliver(ids, returning=returning)
    await queues.outbox(ctx["redis"]).enqueue(outbox.later(due))
    return len(message_ids)


FUNCTIONS: list[WorkerCoroutine] = [ping, dispatch, deliver]
