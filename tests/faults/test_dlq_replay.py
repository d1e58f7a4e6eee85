"""50 concurrent replays of one dead-lettered message make one new delivery.

A webhook receiver refuses each message's first request for good (422: a 4xx other than 410
and 429 is permanent), so the tenant's messages end in the DLQ. Then, with a `herald worker`
process running, 50 `POST /v1/dlq/replay` of one of them go at once, over real connections,
to `herald api` serving with two processes: the replay moves a message only while it is
`failed`, so one request replays it (`replayed: 1`), the other 49 find nothing to move, and
the receiver counts one new arrival of that message id. The others stay in the DLQ.
"""

from __future__ import annotations

import asyncio
import uuid

from arq.constants import in_progress_key_prefix

from jobs import queues
from tests.faults.harness import (
    Answer,
    Receiver,
    Stack,
    Timeline,
    assert_one_id_per_recipient,
    check_ledger,
    job_ids,
    wait_until,
)
from tests.send_path import notify
from tests.support import TenantKey

MESSAGES = 3
REPLAYS = 50


async def test_concurrent_replays_of_one_dlq_message_deliver_it_once(stack: Stack) -> None:
    clock = Timeline()
    receiver = Receiver()
    receiver.script = lambda _id, _to, n: Answer(422 if n == 1 else 204)
    recipients = [f"d{n}" for n in range(MESSAGES)]
    tenant = await stack.webhook_tenant(receiver, recipients)
    try:
        with stack.worker("replays"):
            await notify(stack.api, tenant, template="fault", to=recipients)
            await wait_until(lambda: stack.settled(tenant, MESSAGES), within=30, what="the DLQ")
            rows = await stack.messages(tenant)
            assert {(row.status, row.error_class) for row in rows} == {("failed", "permanent")}
            assert len(receiver.arrivals) == MESSAGES and receiver.kept_total() == 0
            replayed = str(rows[0].id)
            clock.mark("every message in the DLQ")

            async with stack.api_server("api", processes=2) as api:
                clock.mark("herald api serving")
                responses = await asyncio.gather(
                    *(
                        api.post("/v1/dlq/replay", headers=tenant.headers, json={"ids": [replayed]})
                        for _ in range(REPLAYS)
                    )
                )
            clock.mark(f"{REPLAYS} replays answered")
            assert [r.status_code for r in responses] == [200] * REPLAYS, [
                r.text for r in responses if r.status_code != 200
            ]
            assert sorted(r.json()["replayed"] for r in responses) == [0] * (REPLAYS - 1) + [1]

            await wait_until(
                lambda: _sent(stack, tenant, replayed), within=20, what="the replay sent"
            )
            # A second replay would have queued a job of its own: none is left to run.
            await wait_until(lambda: _idle(stack), within=20, what="the queues idle")
        clock.mark("the replay delivered, the queues idle")

        rows = await stack.messages(tenant)
        assert {(str(row.id), row.status) for row in rows} == {
            (str(row.id), "sent" if str(row.id) == replayed else "failed") for row in rows
        }
        kept = receiver.kept()
        assert kept == {replayed: 1}, kept
        assert len(receiver.arrivals) == MESSAGES + 1
        assert check_ledger(rows, kept, in_flight=0) == 0
        assert_one_id_per_recipient([(a.message_id, a.recipient) for a in receiver.arrivals])
        attempts = await stack.attempts(uuid.UUID(replayed))
        assert [(a.outcome, a.status_code) for a in attempts] == [("failed", 422), ("sent", 204)]
    finally:
        receiver.close()


async def _sent(stack: Stack, tenant: TenantKey, message_id: str) -> bool:
    rows = await stack.messages(tenant)
    return any(str(row.id) == message_id and row.status == "sent" for row in rows)


async def _idle(stack: Stack) -> bool:
    """No job but the crons' ticks queued or running."""
    pool = await queues.connect(stack.redis_url)
    try:
        queued = {
            job.decode()
            for name in queues.QUEUE_NAMES.values()
            for job in await pool.zrange(name, 0, -1)
        }
        running = await job_ids(pool, in_progress_key_prefix)
        return all(job.startswith("cron:") for job in queued | running)
    finally:
        await pool.aclose()
