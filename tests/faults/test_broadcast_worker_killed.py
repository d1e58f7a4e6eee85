"""A `herald worker` SIGKILLed while it expands a broadcast loses nothing and writes nothing
twice.

A test-mode tenant (the sandbox delivers) sends to everyone, 20,000 recipients on e-mail and
sms, and the worker process is killed once the first pages are written and before the last:
the notification is still `accepted`, its cursor set, and the deliveries of the windows
already released are under way in the same process. The time that production would wait
is simulated: arq's in-progress mark of the killed jobs expiring (310 s), the dispatch run's
lease (`dispatch_after`) and the delivery claims running out; the sweeper and the relay then
run once with no grace period, and a fresh worker process (whose own relay and sweeper tick
too) re-runs the dispatch, which goes on from the cursor, and releases and delivers the rest.

At the end each (recipient, channel) has exactly one message, with the outcome the
recipient's data calls for; every queued message is `sent` with one `sent` attempt. Only a
message that was being sent at the kill has an attempt more, the `lost` one the sweeper
wrote for it: the sandbox may have taken it before the kill, as a real provider may.
"""

from __future__ import annotations

import collections
import uuid
from datetime import timedelta
from typing import Any

import pytest
from arq import ArqRedis
from arq.constants import in_progress_key_prefix
from sqlalchemy import text

from app.notifications import expansion
from app.notifications.relay import stale_accepted
from jobs import cron, queues
from tests.faults.harness import Stack, Timeline, job_ids, wait_until
from tests.send_path import notify, put_template
from tests.support import TenantKey, make_tenant

N = 20_000
CHANNELS = ("email", "sms")
TEMPLATE = {"email": {"subject": "News", "text": "Hello"}, "sms": {"text": "News"}}


def has_email(i: int) -> bool:
    return i % 10 != 0


def has_phone(i: int) -> bool:
    return i % 4 == 0


def expected() -> set[tuple[str, str, str]]:
    """(external id, channel, status) of every message the broadcast must write."""
    wanted = set()
    for i in range(N):
        wanted.add((f"b{i}", "email", "queued" if has_email(i) else "skipped"))
        wanted.add((f"b{i}", "sms", "queued" if has_phone(i) else "skipped"))
    return wanted


async def seed(stack: Stack, tenant: TenantKey) -> None:
    """N recipients in one statement, by the rules above (written out in SQL)."""
    await stack.execute(
        """
        INSERT INTO recipients (id, tenant_id, mode, external_id, email, phone, data,
                                created_at, updated_at)
        SELECT gen_random_uuid(), :tenant, 'test', 'b' || i,
               CASE WHEN i % 10 <> 0 THEN 'b' || i || '@example.com' END,
               CASE WHEN i % 4 = 0 THEN '+1415' || lpad(CAST(i AS text), 7, '0') END,
               CAST('{}' AS jsonb), now(), now()
          FROM generate_series(0, :n - 1) AS i
        """,
        tenant=tenant.tenant_id,
        n=N,
    )
    # As autovacuum would after such a load: the pages are planned for a settled table.
    await stack.execute("ANALYZE recipients")


async def state(stack: Stack, notification_id: uuid.UUID) -> Any:
    async with stack.sessions() as session:
        row = (
            await session.execute(
                text(
                    "SELECT status, expansion_cursor, releasing, dispatch_after"
                    " FROM notifications WHERE id = :id"
                ),
                {"id": notification_id},
            )
        ).one()
    return row


async def scalar(stack: Stack, statement: str, **params: Any) -> Any:
    async with stack.sessions() as session:
        return await session.scalar(text(statement), params)


async def statuses(stack: Stack, notification_id: uuid.UUID) -> collections.Counter[str]:
    async with stack.sessions() as session:
        rows = await session.execute(
            text("SELECT status, count(*) FROM messages WHERE notification_id = :id GROUP BY 1"),
            {"id": notification_id},
        )
        return collections.Counter({status: n for status, n in rows.all()})


async def finished(stack: Stack, notification_id: uuid.UUID, queued: int) -> bool:
    """Expanded to the end, nothing held, every queued message final."""
    found = await state(stack, notification_id)
    if found.status != "dispatched" or found.releasing:
        return False
    counts = await statuses(stack, notification_id)
    return counts["sent"] + counts["failed"] == queued


@pytest.mark.timeout(300)
async def test_a_worker_killed_mid_expansion_leaves_no_gap_and_no_duplicate(
    stack: Stack,
) -> None:
    clock = Timeline()
    async with stack.sessions() as session:
        tenant = await make_tenant(session, "Broadcaster", mode="test")
    # The enterprise plan's send rate: the drain to the end takes seconds, not minutes.
    await stack.execute(
        "UPDATE tenants SET plan = 'enterprise' WHERE id = :id", id=tenant.tenant_id
    )
    await put_template(stack.api, tenant, "news", TEMPLATE)
    await seed(stack, tenant)
    wanted = expected()
    queued = sum(1 for _, _, status in wanted if status == "queued")
    clock.mark(f"{N} recipients seeded")
    pool = await queues.connect(stack.redis_url)
    try:
        with stack.worker("killed") as first:
            accepted = await notify(
                stack.api, tenant, template="news", to={"all": True}, channels=list(CHANNELS)
            )
            notification_id = uuid.UUID(accepted["id"])
            await wait_until(
                lambda: _expanding_and_sending(stack, notification_id),
                within=60,
                every=0.02,
                what="a page written and sends under way",
            )
            first.kill()
        clock.mark("worker killed")
        # A statement the process sent before it died still runs to its end (a COMMIT
        # too): its connections closed, what the database holds is the kill's outcome.
        await wait_until(
            lambda: _no_connections(stack), within=60, what="the killed worker's connections"
        )
        killed = await _at_the_kill(stack, notification_id)
        assert killed.status == "accepted", "the kill did not land mid-expansion"
        assert killed.expansion_cursor is not None and killed.releasing
        # Whole pages up to the cursor and none past it: a page is written with its cursor.
        written = killed.recipients_written
        assert written == killed.up_to_cursor < N, killed
        assert written % expansion.PAGE_SIZE == 0, written
        at_kill = await statuses(stack, notification_id)
        in_flight = {str(row.id) for row in await stack.messages(tenant) if row.status == "sending"}
        clock.mark(f"{written} of {N} recipients written at the kill: {dict(at_kill)}")

        killed_job = await _time_passes(stack, pool, notification_id)
        async with stack.worker_ctx() as ctx:
            swept = await cron.sweep(ctx, overdue_after=timedelta(0))
            assert swept["expired_claim"] == len(in_flight)
            async with stack.sessions() as session:
                stale = await stale_accepted(session, older_than=timedelta(0), limit=10)
            assert [pending.id for pending in stale] == [notification_id]
            await cron.relay(ctx, older_than=timedelta(0))
        # arq takes a job off its queue when it ends: the killed run's is there still, and
        # runs again (its next try) now that its mark is gone. The relay's `dispatch:<id>`
        # is refused while that job holds the id, and runs beside it otherwise.
        queued_jobs = {
            job.decode() for job in await pool.zrange(queues.QUEUE_NAMES["normal"], 0, -1)
        }
        assert killed_job in queued_jobs

        with stack.worker("fresh") as fresh:
            await wait_until(
                lambda: finished(stack, notification_id, queued),
                within=200,
                every=0.5,
                what="the broadcast expanded and delivered to the end",
            )
            assert await fresh.stop() == 0
        clock.mark("every queued message final")

        # One message per (recipient, channel), each with the outcome its data calls for.
        async with stack.sessions() as session:
            rows = (
                await session.execute(
                    text(
                        """
                        SELECT r.external_id, m.channel, m.status, m.skip_reason
                          FROM messages AS m JOIN recipients AS r ON r.id = m.recipient_id
                         WHERE m.notification_id = :id
                        """
                    ),
                    {"id": notification_id},
                )
            ).all()
        pairs = collections.Counter((external_id, channel) for external_id, channel, *_ in rows)
        assert [pair for pair, n in pairs.items() if n > 1] == []
        assert len(rows) == len(wanted)
        got = {
            (external_id, channel, "queued" if status == "sent" else status)
            for external_id, channel, status, _ in rows
        }
        assert got == wanted, (sorted(wanted - got)[:5], sorted(got - wanted)[:5])
        assert {reason for *_, status, reason in rows if status == "skipped"} == {"no_address"}

        # Every queued message sent once; an attempt more only where the kill cut a send.
        async with stack.sessions() as session:
            attempts = (
                await session.execute(
                    text(
                        """
                        SELECT CAST(m.id AS text), m.status,
                               array_agg(a.outcome ORDER BY a.n, a.id) AS outcomes
                          FROM messages AS m JOIN attempts AS a ON a.message_id = m.id
                         WHERE m.notification_id = :id
                         GROUP BY m.id, m.status
                        """
                    ),
                    {"id": notification_id},
                )
            ).all()
        assert len(attempts) == queued
        assert {status for _, status, _ in attempts} == {"sent"}
        again = {
            message_id: outcomes for message_id, _, outcomes in attempts if outcomes != ["sent"]
        }
        assert set(again) == in_flight
        assert all(outcomes == ["lost", "sent"] for outcomes in again.values()), again
        print(f"in flight at the kill: {len(in_flight)}")
        final = await state(stack, notification_id)
        assert final.dispatch_after is None
        async with stack.sessions() as session:
            assert await expansion.held_count(session, notification_id) == 0
    finally:
        await pool.aclose()


async def _expanding_and_sending(stack: Stack, notification_id: uuid.UUID) -> bool:
    """A page written and more to come, and a released window's sends under way."""
    found = await state(stack, notification_id)
    assert found.status == "accepted", "the expansion ended before the kill"
    if found.expansion_cursor is None:
        return False
    sending = await scalar(
        stack,
        "SELECT count(*) FROM messages WHERE notification_id = :id AND status = 'sending'",
        id=notification_id,
    )
    return bool(sending)


async def _at_the_kill(stack: Stack, notification_id: uuid.UUID) -> Any:
    """The notification, the recipients with messages and those up to its cursor, read at
    once (one snapshot)."""
    async with stack.sessions() as session:
        return (
            await session.execute(
                text(
                    """
                    SELECT n.status, n.expansion_cursor, n.releasing,
                           (SELECT count(DISTINCT m.recipient_id) FROM messages AS m
                             WHERE m.notification_id = n.id) AS recipients_written,
                           (SELECT count(*) FROM recipients AS r
                             WHERE r.tenant_id = n.tenant_id AND r.mode = n.mode
                               AND r.id <= n.expansion_cursor) AS up_to_cursor
                      FROM notifications AS n WHERE n.id = :id
                    """
                ),
                {"id": notification_id},
            )
        ).one()


async def _no_connections(stack: Stack) -> bool:
    found = await scalar(
        stack,
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND usename = :role",
        role=stack.worker_role,
    )
    return found == 0


async def _time_passes(stack: Stack, pool: ArqRedis, notification_id: uuid.UUID) -> str:
    """What production waits for after the kill, without the wait: arq's in-progress marks
    of the killed jobs expiring (310 s), the dispatch run's lease and the claims of the
    sends under way running out. The killed dispatch run's job id (`dispatch:<id>`, or a
    handed-over run's `dispatch:<id>:<ms>`)."""
    marks = await job_ids(pool, in_progress_key_prefix)
    [killed] = [job for job in marks if job.startswith(f"dispatch:{notification_id}")]
    await pool.delete(*(in_progress_key_prefix + job for job in marks))
    await stack.expire_claims()
    await stack.execute(
        "UPDATE notifications SET dispatch_after = now() - interval '5 minutes' WHERE id = :id",
        id=notification_id,
    )
    return killed
