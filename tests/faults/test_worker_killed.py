"""A `herald worker` process killed (SIGKILL) in the middle of a batch loses nothing.

The batch's sends go one at a time to a slow receiver, so the kill lands after some
deliveries and before the rest. Outcomes are written as sends finish, so the deliveries
answered before the kill are recorded and the rest of the batch is left `sending` under the
dead worker's claim. The claim's lease running out and arq's in-progress mark expiring are
simulated (no 30 s / 310 s waits); then the sweeper releases the claims and a fresh worker
process delivers them, racing arq's re-run of the killed job, which the claim keeps from
sending anything twice. What went twice is only what was in flight at the kill.
"""

from __future__ import annotations

import uuid

from arq.constants import in_progress_key_prefix
from arq.jobs import Job, JobStatus

from app.delivery.service import SEND_CONCURRENCY
from jobs import cron, queues
from tests.faults.harness import (
    Receiver,
    Stack,
    assert_one_id_per_recipient,
    check_ledger,
    job_ids,
    wait_until,
)
from tests.send_path import notify

BATCH = 40  # one deliver job: dispatch batches up to 100 messages


async def test_a_worker_killed_mid_batch_loses_nothing(stack: Stack) -> None:
    receiver = Receiver(serial=True, delay=0.1)
    recipients = [f"k{n}" for n in range(BATCH)]
    tenant = await stack.webhook_tenant(receiver, recipients)
    pool = await queues.connect(stack.redis_url)
    try:
        with stack.worker("killed") as first:
            accepted = await notify(stack.api, tenant, template="fault", to=recipients)
            await wait_until(lambda: receiver.kept_total() >= 5, within=30, what="deliveries")
            first.kill()
        before_kill = receiver.kept()
        assert 0 < sum(before_kill.values()) < BATCH, "the kill did not land mid-batch"
        rows = await stack.messages(tenant)
        recorded = {str(row.id) for row in rows if row.status == "sent"}
        claimed = [row for row in rows if row.status == "sending"]
        assert len(rows) == BATCH and len(recorded) + len(claimed) == BATCH
        assert claimed, "the kill did not land mid-batch"
        # Sent but not recorded: answered in the last moments, or under way at the kill.
        unrecorded = set(before_kill) - recorded
        # arq re-runs a killed worker's job once its in-progress mark expires (the largest
        # job timeout + 10 s: 310 s here); deleting the mark is that time passing.
        [killed_job] = {j for j in await job_ids(pool, in_progress_key_prefix) if "deliver" in j}
        await pool.delete(in_progress_key_prefix + killed_job)

        assert await stack.expire_claims() == len(claimed)
        async with stack.worker_ctx() as ctx:
            swept = await cron.sweep(ctx)
        assert swept == {"expired_claim": len(claimed), "overdue": 0}

        with stack.worker("fresh") as fresh:
            await wait_until(
                lambda: stack.settled(tenant, BATCH), within=45, what="every message final"
            )
            job = Job(killed_job, pool, _queue_name=queues.QUEUE_NAMES["normal"])
            await wait_until(
                lambda: _complete(job), within=20, what="arq's re-run of the killed job"
            )
            assert await fresh.stop() == 0
        rerun = await job.result_info()
        assert rerun is not None and rerun.success and rerun.job_try == 2

        rows = await stack.messages(tenant, accepted["id"])
        assert {row.status for row in rows} == {"sent"}
        kept = receiver.kept()
        # In flight at the kill: the sends under way (SEND_CONCURRENCY at most, kept by the
        # receiver as it works through them) and those it answered since the last write of
        # outcomes. What was recorded went once; what the receiver kept before the kill
        # unrecorded went again; the rest once or twice, whichever job claimed it.
        duplicates = check_ledger(rows, kept, in_flight=SEND_CONCURRENCY + len(unrecorded))
        twice = {message_id for message_id, count in kept.items() if count > 1}
        assert unrecorded <= twice <= {str(row.id) for row in claimed}
        assert duplicates == len(twice)
        assert all(kept[message_id] == 1 for message_id in recorded)
        assert set(kept.values()) <= {1, 2}
        assert_one_id_per_recipient([(a.message_id, a.recipient) for a in receiver.arrivals])
        for row in rows:
            attempts = [(a.n, a.outcome) for a in await stack.attempts(uuid.UUID(str(row.id)))]
            if str(row.id) in recorded:
                assert row.attempts == 1 and attempts == [(1, "sent")]
            else:
                assert row.attempts == 2 and attempts == [(1, "lost"), (2, "sent")]
    finally:
        await pool.aclose()
        receiver.close()


async def _complete(job: Job) -> bool:
    return await job.status() == JobStatus.complete
