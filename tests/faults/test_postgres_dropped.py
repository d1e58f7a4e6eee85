"""PostgreSQL connections dropped while a worker sends a batch: nothing is lost.

Twice a batch goes to a slow receiver and the test terminates the `herald worker` process's
backends (`pg_terminate_backend` on the connections of the workers' database role), as a
failover or a restarted pooler would.

- During the sends: outcomes are written as sends finish, so a write may be under way when
  the connections go; its pool's dead ones are replaced, the write is tried again, the
  batch is recorded and nothing goes twice.
- While a write of outcomes waits: the test holds the batch's rows locked, so the worker's
  bulk UPDATE is certainly under way (waiting) when its connection is cut. The write fails
  and is tried again on a fresh connection once the lock is gone: the batch is recorded,
  every message once.
"""

from __future__ import annotations

import uuid

from arq import ArqRedis
from arq.constants import result_key_prefix
from sqlalchemy import text

from jobs import queues
from tests.faults.harness import (
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

BATCH = 20
_WAITING_FOR_A_LOCK = text(
    "SELECT count(*) FROM pg_stat_activity"
    " WHERE datname = current_database() AND usename = :role AND wait_event_type = 'Lock'"
)


async def test_dropped_postgres_connections_lose_nothing(stack: Stack) -> None:
    clock = Timeline()
    receiver = Receiver(serial=True, delay=0.1)
    early, late = [f"a{n}" for n in range(BATCH)], [f"b{n}" for n in range(BATCH)]
    tenant = await stack.webhook_tenant(receiver, early + late)
    pool = await queues.connect(stack.redis_url)
    try:
        with stack.worker("dropped"):
            # During the sends.
            first = await notify(stack.api, tenant, template="fault", to=early)
            await wait_until(lambda: receiver.kept_total() >= 3, within=20, what="sends")
            assert await stack.terminate_worker_backends()
            assert receiver.kept_total() < BATCH, "the batch ended before the connections did"
            await wait_until(
                lambda: stack.settled(tenant, BATCH, notification_id=first["id"]),
                within=20,
                what="the first batch recorded",
            )
            rows = await stack.messages(tenant, first["id"])
            assert {row.status for row in rows} == {"sent"}
            assert check_ledger(rows, receiver.kept(), in_flight=0) == 0

            clock.mark("the first batch recorded")

            # While a write of the outcomes waits.
            second = await notify(stack.api, tenant, template="fault", to=late)
            await wait_until(
                lambda: _dispatched(stack, tenant, second["id"]), within=20, what="dispatch"
            )
            ids = [str(row.id) for row in await stack.messages(tenant, second["id"])]
            await wait_until(lambda: _kept(receiver, ids) >= 1, within=20, what="sends")
            async with stack.engine.connect() as connection:
                await connection.execute(
                    text("SELECT id FROM messages WHERE id = ANY(:ids) FOR UPDATE"),
                    {"ids": [uuid.UUID(i) for i in ids]},
                )
                assert _kept(receiver, ids) < BATCH, "the batch ended before the lock"
                await wait_until(
                    lambda: _waiting(stack), within=20, what="the worker's bulk UPDATE"
                )
                assert await stack.terminate_worker_backends()
                await connection.rollback()
            job = f"deliver:{ids[0]}:{BATCH}"
            await wait_until(
                lambda: _finished(pool, job), within=20, what="the second batch's job to end"
            )
            rows = await stack.messages(tenant, second["id"])
            assert {row.status for row in rows} == {"sent"}, "the outcomes were not written"
        clock.mark("the second batch recorded after its write was cut off")

        rows = await stack.messages(tenant)
        assert {row.status for row in rows} == {"sent"}
        assert check_ledger(rows, receiver.kept(), in_flight=0) == 0
        assert_one_id_per_recipient([(a.message_id, a.recipient) for a in receiver.arrivals])
        for message_id in ids:
            attempts = await stack.attempts(uuid.UUID(message_id))
            assert [(a.n, a.outcome) for a in attempts] == [(1, "sent")], attempts
    finally:
        await pool.aclose()
        receiver.close()


async def _dispatched(stack: Stack, tenant: TenantKey, notification_id: str) -> bool:
    return len(await stack.messages(tenant, notification_id)) == BATCH


def _kept(receiver: Receiver, ids: list[str]) -> int:
    kept = receiver.kept()
    return sum(kept[i] for i in ids)


async def _waiting(stack: Stack) -> bool:
    # A transaction of its own each time: pg_stat_activity is a snapshot held until the
    # end of the transaction that first reads it.
    async with stack.engine.connect() as connection:
        return bool(await connection.scalar(_WAITING_FOR_A_LOCK, {"role": stack.worker_role}))


async def _finished(pool: ArqRedis, job_id: str) -> bool:
    return job_id in await job_ids(pool, result_key_prefix)
