"""The priority queues and how to reach them; the only module that names arq's transport."""

from __future__ import annotations

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
    pool: ArqRedis, queue: str, function: str, *args: Any, job_id: str | None = None
) -> bool:
    """Put one job on a priority queue; False when a job with that id is already there."""
    job = await pool.enqueue_job(function, *args, _queue_name=QUEUE_NAMES[queue], _job_id=job_id)
    return job is not None
