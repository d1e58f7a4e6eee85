"""Redis flushed and restarted under a running `herald worker`: PostgreSQL rebuilds the queue.

At the moment Redis loses everything the worker process has work deferred in the queues:
messages retrying after a 503 with `Retry-After` (their retry jobs deferred) and a
notification scheduled a few seconds ahead (its dispatch job deferred). While Redis is down
the API accepts another notification: its enqueue fails, so only PostgreSQL knows of it.
Redis comes back empty on the same port.

The worker rides the outage out (its Redis commands are retried with backoff until Redis
answers) and consumes again once it is back; the second test holds it to finishing and
recording the batch it was sending meanwhile. The relay and the
sweeper (called directly, with no grace period, instead of waiting for their ticks and
thresholds) find everything Redis lost in PostgreSQL again. Every message arrives exactly
once, and none before its time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta

from jobs import cron, queues
from tests.faults.harness import (
    Answer,
    Receiver,
    Stack,
    Timeline,
    assert_one_id_per_recipient,
    check_ledger,
    wait_until,
)
from tests.send_path import notify
from tests.support import TenantKey

GROUP = 5
BATCH = 20  # one deliver job, sent one by one: Redis goes while it is under way
RETRY_AFTER = 6  # seconds: the retries are still deferred when Redis goes
SCHEDULE_AHEAD = timedelta(seconds=4)
OUTAGE = 1.0  # seconds Redis is away: a restart, not a blip every poll would miss
FAST_RETRIES = {"max_attempts": 20, "window_hours": 1}


async def test_a_flushed_and_restarted_redis_loses_nothing(stack: Stack) -> None:
    clock = Timeline()
    receiver = Receiver()
    # Each retrying message's first request is refused: it waits for a deferred retry.
    receiver.script = lambda _id, to, n: (
        Answer(503, {"Retry-After": str(RETRY_AFTER)})
        if to.startswith("/hook/r") and n == 1
        else Answer(204)
    )
    groups = {kind: [f"{kind}{n}" for n in range(GROUP)] for kind in ("r", "s", "u")}
    tenant = await stack.webhook_tenant(receiver, [r for group in groups.values() for r in group])
    await _fast_retries(stack, tenant)
    try:
        with stack.worker("before") as before:
            retried = await notify(stack.api, tenant, template="fault", to=groups["r"])
            await wait_until(
                lambda: _all_in(stack, tenant, retried["id"], "retrying"),
                within=20,
                what="the first attempts to fail",
            )
            retry_due = {str(r.id): r.next_attempt_at for r in await stack.messages(tenant)}
            send_at = datetime.now(UTC) + SCHEDULE_AHEAD
            await notify(
                stack.api, tenant, template="fault", to=groups["s"], send_at=send_at.isoformat()
            )
            assert await _deferred(stack) >= {"dispatch", "retry"}  # what Redis is about to lose
            clock.mark("retries and a send_at deferred")

            await _flush_and_restart(stack, during_outage=_accept(stack, tenant, groups["u"]))
            clock.mark("Redis flushed and restarted")
            await wait_until(
                lambda: before.exit_code is not None or _consumes(stack),
                within=15,
                what="the worker to consume again or exit",
            )
            assert before.exit_code is None, f"the worker exited {before.exit_code}"
            async with stack.worker_ctx() as ctx:

                async def rebuilt() -> bool:
                    await cron.relay(ctx, older_than=timedelta(0))
                    await cron.sweep(ctx, overdue_after=timedelta(0))
                    return await stack.settled(tenant, 3 * GROUP)

                await wait_until(rebuilt, within=45, every=0.5, what="every message final")
        clock.mark("every message final")

        rows = await stack.messages(tenant)
        assert {row.status for row in rows} == {"sent"}
        assert check_ledger(rows, receiver.kept(), in_flight=0) == 0
        assert_one_id_per_recipient([(a.message_id, a.recipient) for a in receiver.arrivals])
        kept = {a.message_id: a for a in receiver.kept_arrivals()}
        by_group = {
            kind: [a for a in kept.values() if a.recipient.startswith(f"/hook/{kind}")]
            for kind in groups
        }
        assert {kind: len(arrivals) for kind, arrivals in by_group.items()} == dict.fromkeys(
            groups, GROUP
        )
        assert all(a.at >= send_at.timestamp() for a in by_group["s"]), "sent before its send_at"
        for arrival in by_group["r"]:
            due = retry_due[arrival.message_id]
            assert due is not None and arrival.at >= due.timestamp(), "retried before its time"
        assert all(row.attempts == (2 if str(row.id) in retry_due else 1) for row in rows)
    finally:
        receiver.close()


async def test_a_running_worker_consumes_again_after_redis_restarts(stack: Stack) -> None:
    """What a worker should do: keep the batch it is sending when Redis goes, record it, and
    consume every queue again once Redis is back."""
    receiver = Receiver(serial=True, delay=0.1)
    batch = [f"f{n}" for n in range(BATCH)]
    tenant = await stack.webhook_tenant(receiver, [*batch, "after"])
    try:
        with stack.worker("running") as running:
            await notify(stack.api, tenant, template="fault", to=batch)
            await wait_until(lambda: receiver.kept_total() >= 3, within=20, what="sends")
            assert receiver.kept_total() < BATCH, "the batch ended before Redis went"
            await _flush_and_restart(stack, during_outage=asyncio.sleep(0))
            await notify(stack.api, tenant, template="fault", to=["after"])
            await wait_until(
                lambda: running.exit_code is not None or stack.settled(tenant, BATCH + 1),
                within=20,
                what="every message final, or the worker gone",
            )
            assert running.exit_code is None, f"the worker exited {running.exit_code}"
            assert await _consumes(stack), "the worker no longer consumes every queue"
        rows = await stack.messages(tenant)
        assert {row.status for row in rows} == {"sent"}
        assert check_ledger(rows, receiver.kept(), in_flight=0) == 0
        assert_one_id_per_recipient([(a.message_id, a.recipient) for a in receiver.arrivals])
    finally:
        receiver.close()


async def _flush_and_restart(stack: Stack, *, during_outage: Awaitable[None]) -> None:
    """FLUSHALL, stop the server, await `during_outage` while it is away (OUTAGE seconds at
    least), and start it again on the same port: it comes back empty (no persistence)."""
    pool = await queues.connect(stack.redis_url)
    before = (await pool.info("server"))["run_id"]
    await pool.flushall()
    await pool.aclose()
    stack.redis.stop()
    await asyncio.gather(during_outage, asyncio.sleep(OUTAGE))
    stack.redis.start()
    pool = await queues.connect(stack.redis_url)
    try:
        # Another server process (the workers, retrying, may write to it at once, so its
        # key count says nothing): what it holds, they wrote after the restart.
        assert (await pool.info("server"))["run_id"] != before
    finally:
        await pool.aclose()


async def _accept(stack: Stack, tenant: TenantKey, recipients: list[str]) -> None:
    """A notification accepted while Redis is down: its dispatch job is never enqueued."""
    await notify(stack.api, tenant, template="fault", to=recipients)


async def _consumes(stack: Stack) -> bool:
    """Whether a worker answers a ping on every queue within a few seconds."""
    pool = await queues.connect(stack.redis_url)
    try:
        for name in queues.QUEUE_NAMES.values():
            job = await pool.enqueue_job("ping", name, _queue_name=name)
            assert job is not None
            try:
                assert await job.result(timeout=3) == f"pong:{name}"
            except TimeoutError:
                return False
        return True
    finally:
        await pool.aclose()


async def _deferred(stack: Stack) -> set[str]:
    """The kinds of job (dispatch, deliver, retry, …) waiting in the queues."""
    pool = await queues.connect(stack.redis_url)
    try:
        return {
            job.decode().split(":")[0]
            for name in queues.QUEUE_NAMES.values()
            for job in await pool.zrange(name, 0, -1)
        }
    finally:
        await pool.aclose()


async def _fast_retries(stack: Stack, tenant: TenantKey) -> None:
    response = await stack.api.put(
        "/v1/tenant/retry-policy", headers=tenant.headers, json=FAST_RETRIES
    )
    assert response.status_code == 200, response.text


async def _all_in(stack: Stack, tenant: TenantKey, notification_id: str, status: str) -> bool:
    rows = await stack.messages(tenant, notification_id)
    return len(rows) == GROUP and all(row.status == status for row in rows)
