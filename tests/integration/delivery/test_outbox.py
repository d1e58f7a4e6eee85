"""The outbox over arq: a batch of jobs in one Redis round trip, duplicates refused by id,
and an enqueue that fails after a commit logged, counted and not raised."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from arq import ArqRedis
from prometheus_client import REGISTRY

from app.delivery import outbox
from app.runtime import ServiceUrls
from jobs import queues
from tests.queue_traffic import queue_traffic


def failures(function: str) -> float:
    sample = REGISTRY.get_sample_value("herald_enqueue_failures_total", {"function": function})
    return sample or 0.0


async def test_a_batch_is_one_round_trip_and_duplicates_are_refused(
    service_urls: ServiceUrls,
) -> None:
    pool = await queues.connect(service_urls.redis_url)
    try:
        ids = [uuid.uuid4() for _ in range(2 * outbox.BATCH_SIZE + 50)]
        notification = uuid.uuid4()
        at = datetime.now(UTC) + timedelta(minutes=5)
        jobs = [
            outbox.dispatch(notification, "normal", None),
            *(outbox.deliver("high", piece) for _, piece in outbox.batches(("k", i) for i in ids)),
            outbox.retry("low", ids[0], 2, at),
        ]
        assert [len(job.args[0]) for job in jobs if job.function == "deliver"][:3] == [
            100,
            100,
            50,
        ]
        async with queue_traffic(service_urls.redis_url) as traffic:
            first = await queues.outbox(pool).enqueue(jobs)
            # The same jobs again: every id is taken, nothing is written twice.
            again = await queues.outbox(pool).enqueue(
                [*jobs, outbox.dispatch(uuid.uuid4(), "low", at)]
            )
        assert first == [True] * len(jobs)
        assert again == [False] * len(jobs) + [True]
        assert (traffic.round_trips, traffic.script_calls) == (2, 2)
        queued = {
            job.decode()
            for name in queues.QUEUE_NAMES.values()
            for job in await pool.zrange(name, 0, -1)
        }
        assert {job.id for job in jobs} <= queued
    finally:
        await pool.flushdb()
        await pool.aclose()


async def test_a_failed_enqueue_after_commit_is_logged_and_counted() -> None:
    # Nothing listens on port 9 (discard): the enqueue fails as with Redis down. (Not
    # queues.connect, which waits for Redis to answer first.)
    pool = ArqRedis.from_url("redis://127.0.0.1:9/2")
    try:
        before = failures("deliver"), failures("dispatch")
        jobs = [
            outbox.deliver("normal", [uuid.uuid4()]),
            outbox.dispatch(uuid.uuid4(), "high", None),
        ]
        assert await queues.outbox(pool).enqueue_after_commit(jobs) == [False, False]
        assert (failures("deliver"), failures("dispatch")) == (before[0] + 1, before[1] + 1)
    finally:
        await pool.aclose()
