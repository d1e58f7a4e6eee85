"""The priority queues over arq: their names, how to connect, and the outbox's enqueuer.

The domain describes jobs (app/delivery/outbox.py) and never imports arq; this module turns
them into arq's jobs. jobs/worker.py and jobs/cron.py use arq too (workers, cron ticks).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from arq import ArqRedis, create_pool
from arq.connections import RedisSettings
from arq.constants import job_key_prefix, result_key_prefix
from arq.jobs import serialize_job
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.delivery.outbox import Job, Outbox

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


class ArqEnqueuer:
    """The outbox's Enqueuer (app/delivery/outbox.py) over arq: one script call per batch."""

    def __init__(self, pool: ArqRedis) -> None:
        self.pool = pool

    async def enqueue(self, jobs: Sequence[Job]) -> list[bool]:
        """Enqueue jobs in one round trip; per job, whether it was new (else it existed)."""
        if not jobs:
            return []
        now_ms = int(time.time() * 1000)
        argv: list[Any] = []
        for job in jobs:
            score = int(job.defer_until.timestamp() * 1000) if job.defer_until else now_ms
            payload = serialize_job(job.function, job.args, {}, None, now_ms)
            expires_ms = max(score - now_ms, 0) + EXPIRES_EXTRA_MS
            argv += [QUEUE_NAMES[job.priority], job.id, score, expires_ms, payload]
        script = self.pool.register_script(ENQUEUE_MANY)  # EVALSHA, falling back to EVAL once
        written = await script(keys=[job_key_prefix, result_key_prefix], args=argv)
        return [bool(flag) for flag in written]


async def withdraw(redis: Redis, jobs: Sequence[Job]) -> None:
    """Take queued jobs off their queues, unstarted, in one round trip (a benchmark leaving
    no backlog behind it)."""
    if not jobs:
        return
    pipe = redis.pipeline(transaction=False)
    for job in jobs:
        pipe.zrem(QUEUE_NAMES[job.priority], job.id)
    pipe.delete(*(job_key_prefix + job.id for job in jobs))
    await pipe.execute()


def outbox(pool: ArqRedis) -> Outbox:
    """The domain's outbox over this pool."""
    return Outbox(ArqEnqueuer(pool))


# arq's enqueue_job costs a WATCH/MULTI/EXEC exchange per job. This script does the same
# for a whole batch in one call: a job is written (payload + queue entry) only when neither
# its payload nor its result is present, which is arq's uniqueness rule for job ids. It
# answers 1 or 0 per job: written, or refused as a duplicate.
ENQUEUE_MANY = """
local written = {}
for i = 1, #ARGV, 5 do
  local job_id = ARGV[i + 1]
  if redis.call('EXISTS', KEYS[1] .. job_id, KEYS[2] .. job_id) == 0 then
    redis.call('PSETEX', KEYS[1] .. job_id, ARGV[i + 3], ARGV[i + 4])
    redis.call('ZADD', ARGV[i], ARGV[i + 2], job_id)
    written[#written + 1] = 1
  else
    written[#written + 1] = 0
  end
end
return written
"""
EXPIRES_EXTRA_MS = 86_400_000  # arq's default: a job not started within a day is dropped
