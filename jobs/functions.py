"""The job functions that workers run; each calls domain services, never SQL of its own."""

from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import datetime
from typing import Any

import structlog
from arq.typing import WorkerCoroutine

from app.delivery.service import Deliverer, Due
from app.notifications import failures
from app.notifications.dispatch import dispatch as dispatch_notification
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
                session, notification_id=key, renderer=ctx["renderer"]
            )
            await session.commit()
    except Exception as error:
        async with ctx["sessions"]() as session:
            await failures.record_failure(session, notification_id=key, error=error)
        raise
    jobs = [queues.delivery_job(b.priority, b.message_ids) for b in done.batches]
    if done.later is not None:  # out of render budget: the rest when it has refilled
        jobs.append(queues.later_dispatch_job(key, done.priority, done.later))
    await queues.enqueue_many(ctx["redis"], jobs)
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
    await queues.enqueue_many(ctx["redis"], later_jobs(due))
    return len(message_ids)


def later_jobs(due: list[Due]) -> list[queues.QueuedJob]:
    """A retry is a job of its own; messages given back unsent come back together with
    those due at the same moment (the router times its groups so)."""
    jobs = [queues.retry_job(d.priority, d.message_id, d.attempt, d.at) for d in due if d.attempt]
    together: dict[tuple[str, datetime], list[Due]] = defaultdict(list)
    for item in due:
        if not item.attempt:
            together[(item.priority, item.at)].append(item)
    for group in together.values():
        for start in range(0, len(group), queues.WAIT_GROUP_SIZE):
            jobs.append(queues.waiting_job(group[start : start + queues.WAIT_GROUP_SIZE]))
    return jobs


FUNCTIONS: list[WorkerCoroutine] = [ping, dispatch, deliver]
