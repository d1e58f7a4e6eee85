"""The priority queues and how to reach them; the only module that names arq's transport."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from arq import ArqRedis, create_pool
from arq.connections import RedisSettings
from arq.constants import job_key_prefix, result_key_prefix
from arq.jobs import serialize_job
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

# Priorities are separate arq queues, each served by its own worker pool.
QUEUE_NAMES = {"high": "herald:high", "normal": "herald:normal", "low": "herald:low"}
# How often an idle worker polls its queue: short for high priority, lazier below.
POLL_DELAYS = {"high": 0.02, "normal": 0.02, "low": 0.1}


# A worker outlives a Redis restart: every command of its connection is retried with backoff
# (up to WORKER_RETRY_CAP seconds apart) until Redis answers again, instead of raising out of
# arq's poll loop and stopping the worker, and cancelling the batch it was sending.
WORKER_RETRY_CAP = 2.0


def redis_settings(redis_url: str, *, wait_for_redis: bool = False) -> RedisSettings:
    """arq's connection settings; `wait_for_redis` (workers): ride out a Redis outage."""
    settings = RedisSettings.from_dsn(redis_url)
    if wait_for_redis:
        settings.retry = Retry(ExponentialBackoff(cap=WORKER_RETRY_CAP, base=0.05), retries=-1)
        settings.retry_on_error = [RedisConnectionError, RedisTimeoutError, OSError]
    return settings


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


@dataclass(frozen=True)
class QueuedJob:
    """One job for enqueue_many: what arq's enqueue_job takes, for a batch."""

    queue: str  # a priority: high | normal | low
    function: str
    args: tuple[Any, ...]
    job_id: str
    defer_until: datetime | None = None


# arq's enqueue_job costs a WATCH/MULTI/EXEC exchange per job. This script does the same
# for a whole batch in one call: a job is written (payload + queue entry) only when neither
# its payload nor its result is present, which is arq's uniqueness rule for job ids.
_ENQUEUE_MANY = """
local written = 0
for i = 1, #ARGV, 5 do
  local job_id = ARGV[i + 1]
  if redis.call('EXISTS', KEYS[1] .. job_id, KEYS[2] .. job_id) == 0 then
    redis.call('PSETEX', KEYS[1] .. job_id, ARGV[i + 3], ARGV[i + 4])
    redis.call('ZADD', ARGV[i], ARGV[i + 2], job_id)
    written = written + 1
  end
end
return written
"""
EXPIRES_EXTRA_MS = 86_400_000  # arq's default: a job not started within a day is dropped


async def enqueue_many(pool: ArqRedis, jobs: Sequence[QueuedJob]) -> int:
    """Enqueue jobs in one round trip; returns how many were new (the rest already existed)."""
    if not jobs:
        return 0
    now_ms = int(time.time() * 1000)
    argv: list[Any] = []
    for job in jobs:
        score = int(job.defer_until.timestamp() * 1000) if job.defer_until else now_ms
        payload = serialize_job(job.function, job.args, {}, None, now_ms)
        expires_ms = max(score - now_ms, 0) + EXPIRES_EXTRA_MS
        argv += [QUEUE_NAMES[job.queue], job.job_id, score, expires_ms, payload]
    script = pool.register_script(_ENQUEUE_MANY)  # EVALSHA, falling back to EVAL once
    written = await script(keys=[job_key_prefix, result_key_prefix], args=argv)
    return int(written)


def dispatch_job(notification_id: uuid.UUID, priority: str, send_at: datetime | None) -> QueuedJob:
    # The job id is the notification's: enqueueing it twice (a retry, the relay) is harmless.
    return QueuedJob(
        priority, "dispatch", (str(notification_id),), f"dispatch:{notification_id}", send_at
    )


def later_dispatch_job(notification_id: uuid.UUID, priority: str, at: datetime) -> QueuedJob:
    """The rest of a dispatch deferred for the render budget. Its own id: the running job
    still holds `dispatch:<id>`; the relay leaves the notification alone until `at`."""
    job_id = f"dispatch:{notification_id}:{int(at.timestamp() * 1000)}"
    return QueuedJob(priority, "dispatch", (str(notification_id),), job_id, at)


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


WAIT_GROUP_SIZE = 100


def delivery_job(priority: str, message_ids: Sequence[uuid.UUID]) -> QueuedJob:
    ids = [str(message_id) for message_id in message_ids]
    return QueuedJob(priority, "deliver", (ids, priority), f"deliver:{ids[0]}:{len(ids)}")


def retry_job(priority: str, message_id: uuid.UUID, attempt: int, at: datetime) -> QueuedJob:
    # The due time makes the id unique even when a replay restarts the attempt count
    # while the previous retry's result is still kept.
    job_id = f"retry:{message_id}:{attempt}:{int(at.timestamp() * 1000)}"
    return QueuedJob(priority, "deliver", ([str(message_id)], priority), job_id, at)


def waiting_job(group: Sequence[Any]) -> QueuedJob:
    """Messages given back unsent (tokens, breakers, shutdown): due when the last one is."""
    ids = [str(item.message_id) for item in group]
    at = max(item.at for item in group)
    job_id = f"wait:{ids[0]}:{len(ids)}:{int(at.timestamp() * 1000)}"
    return QueuedJob(group[0].priority, "deliver", (ids, group[0].priority, True), job_id, at)
