"""A `herald worker` process stopped with SIGTERM mid-batch finishes or gives back its claims.

The batch's sends queue at a slow receiver: SEND_CONCURRENCY of them are under way when
the signal comes, the rest wait for their turn. The calls under way finish and are
recorded; the rest are given back unsent (no attempt spent) and a fresh worker sends them.
Nothing is left `sending`, nothing is sent twice.
"""

from __future__ import annotations

import uuid

from app.delivery.service import SEND_CONCURRENCY
from tests.faults.harness import (
    Receiver,
    Stack,
    assert_one_id_per_recipient,
    check_ledger,
    wait_until,
)
from tests.send_path import notify

BATCH = 40  # one deliver job, more messages than SEND_CONCURRENCY


async def test_a_worker_stopped_mid_batch_gives_back_what_it_did_not_send(stack: Stack) -> None:
    assert BATCH > SEND_CONCURRENCY
    receiver = Receiver(serial=True, delay=0.05)
    recipients = [f"t{n}" for n in range(BATCH)]
    tenant = await stack.webhook_tenant(receiver, recipients)
    try:
        with stack.worker("stopped") as first:
            accepted = await notify(stack.api, tenant, template="fault", to=recipients)
            await wait_until(lambda: receiver.kept_total() >= 3, within=30, what="deliveries")
            assert await first.stop() == 0
        rows = await stack.messages(tenant, accepted["id"])
        by_status = {
            status: [r for r in rows if r.status == status] for status in ("sent", "queued")
        }
        # Every call under way was finished and written; the rest went back, unspent.
        assert len(by_status["sent"]) + len(by_status["queued"]) == BATCH, [r.status for r in rows]
        assert by_status["queued"], "the signal did not land mid-batch"
        assert all(r.attempts == 1 for r in by_status["sent"])
        assert all(r.attempts == 0 for r in by_status["queued"])
        assert sum(receiver.kept().values()) == len(by_status["sent"])

        with stack.worker("fresh") as fresh:
            await wait_until(
                lambda: stack.settled(tenant, BATCH), within=45, what="every message final"
            )
            assert await fresh.stop() == 0
        rows = await stack.messages(tenant, accepted["id"])
        assert {row.status for row in rows} == {"sent"}
        assert check_ledger(rows, receiver.kept(), in_flight=0) == 0
        assert_one_id_per_recipient([(a.message_id, a.recipient) for a in receiver.arrivals])
        for row in rows:
            attempts = [(a.n, a.outcome) for a in await stack.attempts(uuid.UUID(str(row.id)))]
            assert attempts == [(1, "sent")]
    finally:
        receiver.close()
