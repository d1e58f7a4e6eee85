"""The priority queues and how to reach them; the only module that names arq's transport."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from arq import ArqRedis, create_pool
from arq.connections import RedisSettings

# Priorities are separate arq queues, each served by its own worker pool.
QUEUE_NAMES = {"high": "herald:high", "normal": "herald:normal", "low": "herald:low"}
# How often an idle worker polls its queue: short for high priority, lazier below.
POLL_DELAYS = {"high": 0.05, "normal": 0.2, "low": 0.5}


def redis_settings(redis_url: str) -> RedisSettings:
    return RedisSettings.from_dsn(redis_url)


async def connect(redis_url: str) -> ArqRedis:
    return await create_pool(redis_settings(redis_url))


async def enqueue(
    pool: ArqRedis,
    queue: str,
    function: str,
    *args: Any,
    job_id: str | None = None,
    defer_until: datetime | None = None,
) -> bool:
    """Put one job on a priority queue; False when a job with that id is already there."""
    job = await pool.enqueue_job(
        function,
        *args,
        _queue_name=QUEUE_NAMES[queue],
        _job_id=job_id,
        _defer_until=defer_until,
    )
    return job is not None


async def enqueue_dispatch(
    pool: ArqRedis, notification_id: uuid.UUID, priority: str, send_at: datetime | None
) -> bool:
    # The job id is the notification's: enqueueing it twice (a retry, the relay) is harmless.
    return await enqueue(
        pool,
        priority,
        "dispatch",
        str(notification_id),
        job_id=f"dispatch:{notification_id}",
        defer_until=send_at,
    )


async def enqueue_delivery(
    pool: ArqRedis, priority: str, message_ids: list[uuid.UUID], *, job_id: str | None = None
) -> bool:
    # arq refuses a job id whose job or result it still holds: a redelivery (a DLQ replay)
    # passes its own id, or it would be dropped as a duplicate of the first delivery.
    return await enqueue(
        pool,
        priority,
        "deliver",
        [str(message_id) for message_id in message_ids],
        priority,
        job_id=job_id or f"deliver:{message_ids[0]}:{len(message_ids)}",
    )


async def enqueue_retry(
    pool: ArqRedis, priority: str, message_id: uuid.UUID, attempt: int, at: datetime
) -> bool:
    return await enqueue(
        pool,
        priority,
        "deliver",
        [str(message_id)],
        priority,
        # The due time makes the id unique even when a replay restarts the attempt count
        # while the previous retry's result is still kept.
        job_id=f"retry:{message_id}:{attempt}:{int(at.timestamp() * 1000)}",
        defer_until=at,
    )
