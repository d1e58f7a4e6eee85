"""Redis flushed and restarted while work is queued and deferred: PostgreSQL rebuilds it.

At the moment Redis loses everything, the tenant has messages in every state a queue holds:
a notification not dispatched yet, one scheduled a few seconds ahead (its dispatch job
deferred), messages dispatched and waiting for their deliver job, and messages retrying
after a 503 (their retry deferred). The workers are stopped, Redis is flushed and restarted
on the same port, the workers start again, and the relay and the sweeper (called directly,
with no grace period, instead of waiting for their ticks and thresholds) find everything in
PostgreSQL again. Every message arrives exactly once, and none before its time.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from jobs import cron, functions, queues
from tests.faults.harness import (
    Answer,
    Receiver,
    Stack,
    assert_one_id_per_recipient,
    check_ledger,
    running_workers,
    wait_until,
)
from tests.send_path import notify
from tests.support import TenantKey

GROUP = 5
SCHEDULE_AHEAD = timedelta(seconds=5)


async def test_a_flushed_and_restarted_redis_loses_nothing(stack: Stack) -> None:
    receiver = Receiver()
    # Each retrying message's first request is refused: it waits for a deferred retry.
    receiver.script = lambda _id, to, n: Answer(503 if to.startswith("/hook/r") and n == 1 else 204)
    groups = {kind: [f"{kind}{n}" for n in range(GROUP)] for kind in ("r", "s", "u", "q")}
    tenant = await stack.webhook_tenant(receiver, [r for group in groups.values() for r in group])
    pool = await queues.connect(stack.redis_url)
    try:
        retried = await notify(stack.api, tenant, template="fault", to=groups["r"])
        async with stack.worker_ctx() as ctx, running_workers(ctx, stack.redis_url):
            await wait_until(
                lambda: _all_in(stack, tenant, retried["id"], "retrying"),
                within=20,
                what="the first attempts to fail",
            )
        retry_due = {str(r.id): r.next_attempt_at for r in await stack.messages(tenant)}
        assert len(retry_due) == GROUP
        send_at = datetime.now(UTC) + SCHEDULE_AHEAD
        scheduled = await notify(
            stack.api, tenant, template="fault", to=groups["s"], send_at=send_at.isoformat()
        )
        await notify(stack.api, tenant, template="fault", to=groups["u"])  # not dispatched
        waiting = await notify(stack.api, tenant, template="fault", to=groups["q"])
        async with stack.worker_ctx() as ctx:
            assert await functions.dispatch(ctx, waiting["id"]) == 1  # its deliver job queued
        jobs = {
            job.decode().split(":")[0]
            for name in queues.QUEUE_NAMES.values()
            for job in await pool.zrange(name, 0, -1)
        }
        assert jobs >= {"dispatch", "deliver", "retry"}, jobs  # what the flush is about to lose

        await pool.flushall()
        await pool.aclose()
        stack.redis.stop()
        stack.redis.start()
        pool = await queues.connect(stack.redis_url)
        assert await pool.dbsize() == 0

        async with stack.worker_ctx() as ctx, running_workers(ctx, stack.redis_url):

            async def rebuilt() -> bool:
                await cron.relay(ctx, older_than=timedelta(0))
                await cron.sweep(ctx, overdue_after=timedelta(0))
                return await stack.settled(tenant, 4 * GROUP)

            await wait_until(rebuilt, within=45, every=0.5, what="every message final")

        rows = await stack.messages(tenant)
        assert {row.status for row in rows} == {"sent"}
        assert check_ledger(rows, receiver.kept(), in_flight=0) == 0
        assert_one_id_per_recipient([(a.message_id, a.recipient) for a in receiver.arrivals])
        kept = {a.message_id: a for a in receiver.kept_arrivals()}
        on_time = [a for a in kept.values() if a.recipient.startswith("/hook/s")]
        assert len(on_time) == GROUP
        assert all(a.at >= send_at.timestamp() for a in on_time), "sent before its send_at"
        retries = [a for a in kept.values() if a.recipient.startswith("/hook/r")]
        assert len(retries) == GROUP
        for arrival in retries:
            due = retry_due[arrival.message_id]
            assert due is not None and arrival.at >= due.timestamp(), "retried before its time"
        for row in await stack.messages(tenant, scheduled["id"]):
            assert row.attempts == 1
    finally:
        await pool.aclose()
        receiver.close()


async def _all_in(stack: Stack, tenant: TenantKey, notification_id: str, status: str) -> bool:
    rows = await stack.messages(tenant, notification_id)
    return len(rows) == GROUP and all(row.status == status for row in rows)
