"""Message tallies: a notification's counts by status, kept by triggers on messages, equal a
real count of its messages after every kind of write (dispatch, deliveries, cancel, pause,
DLQ replay, erasure, deletions), under writers racing each other, and through compaction
racing them too."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.db import session_factory
from app.delivery.claims import claim
from app.delivery.service import Deliverer
from app.delivery.sweeper import expired_claims
from app.notifications import tallies
from app.notifications.dispatch import dispatch
from app.notifications.models import Message, MessageTally
from app.runtime import ServiceUrls
from jobs.cron import compact_tallies
from tests.send_path import notification, notify, put_recipient, put_template, workers
from tests.support import TenantKey, key_of, settings_for, unmetered_renderer

MAIL = {"email": {"subject": "Hi", "text": "Hello"}}
# The sandbox sends to the first, refuses the second for good and the third for now.
ADDRESSES = {
    "ok": "ok@example.com",
    "bad": "fail@sandbox.herald",
    "flaky": "transient@sandbox.herald",
}


@pytest.fixture
async def deliverer(service_urls: ServiceUrls) -> AsyncIterator[Deliverer]:
    settings = settings_for(service_urls.database_url, service_urls.redis_url)
    async with workers(settings) as ctx:
        yield ctx["deliverer"]


@pytest.fixture
async def sender(client: httpx.AsyncClient, tenant: TenantKey, session: AsyncSession) -> TenantKey:
    """A test key (its messages go to the sandbox) with a template and three recipients."""
    key = await key_of(session, tenant, "test")
    await put_template(client, key, "mail", MAIL)
    for external_id, email in ADDRESSES.items():
        await put_recipient(client, key, external_id, email=email)
    return key


async def dispatched(
    client: httpx.AsyncClient, session: AsyncSession, key: TenantKey, to: list[str]
) -> tuple[uuid.UUID, list[uuid.UUID]]:
    """A notification to `to`, dispatched: its id and its messages' ids."""
    accepted = await notify(client, key, template="mail", to=to)
    notification_id = uuid.UUID(accepted["id"])
    await dispatch(session, notification_id=notification_id, renderer=unmetered_renderer())
    await session.commit()
    ids = await session.scalars(
        select(Message.id).where(Message.notification_id == notification_id).order_by(Message.id)
    )
    return notification_id, list(ids)


async def counted(session: AsyncSession, notification_id: uuid.UUID) -> dict[str, int]:
    """The tallies' counts, checked against a count of the messages themselves."""
    real = await session.execute(
        select(Message.status, func.count())
        .where(Message.notification_id == notification_id)
        .group_by(Message.status)
    )
    tallied = await tallies.counts(session, notification_id=notification_id)
    await session.commit()
    assert tallied == {status: n for status, n in real}
    return tallied


async def tally_rows(session: AsyncSession, notification_id: uuid.UUID) -> int:
    rows = await session.scalar(
        select(func.count())
        .select_from(MessageTally)
        .where(MessageTally.notification_id == notification_id)
    )
    await session.commit()
    return int(rows or 0)


async def test_counts_follow_dispatch_deliveries_and_a_replay(
    client: httpx.AsyncClient, sender: TenantKey, session: AsyncSession, deliverer: Deliverer
) -> None:
    notification_id, ids = await dispatched(client, session, sender, list(ADDRESSES))
    assert await counted(session, notification_id) == {"queued": 3}

    await deliverer.deliver(ids)
    assert await counted(session, notification_id) == {"sent": 1, "failed": 1, "retrying": 1}
    shown = await notification(client, sender, str(notification_id))
    assert shown["counts"] == {"sent": 1, "failed": 1, "retrying": 1}

    [failed] = [m["id"] for m in shown["messages"] if m["status"] == "failed"]
    replayed = await client.post("/v1/dlq/replay", headers=sender.headers, json={"ids": [failed]})
    assert replayed.json() == {"replayed": 1, "not_replayable": 0}, replayed.text
    assert await counted(session, notification_id) == {"sent": 1, "queued": 1, "retrying": 1}


async def test_claims_the_sweeper_takes_back_are_counted(
    client: httpx.AsyncClient, sender: TenantKey, session: AsyncSession
) -> None:
    notification_id, ids = await dispatched(client, session, sender, ["ok", "flaky"])
    assert len(await claim(session, ids, lease=timedelta(seconds=-1))) == 2  # a dead worker's
    await session.commit()
    assert await counted(session, notification_id) == {"sending": 2}
    await expired_claims(session, limit=1_000)
    await session.commit()
    assert await counted(session, notification_id) == {"retrying": 2}


async def test_cancel_and_erasure_are_counted_and_a_pause_writes_nothing(
    client: httpx.AsyncClient, sender: TenantKey, session: AsyncSession
) -> None:
    notification_id, _ = await dispatched(client, session, sender, ["ok", "bad"])
    rows = await tally_rows(session, notification_id)
    # Pausing and resuming move due times, not statuses: no tally is written.
    for verb in ("pause", "resume"):
        url = f"/v1/notifications/{notification_id}/{verb}"
        assert (await client.post(url, headers=sender.headers)).status_code == 200
    assert await tally_rows(session, notification_id) == rows
    assert await counted(session, notification_id) == {"queued": 2}

    erased = await client.delete("/v1/recipients/bad", headers=sender.headers)
    assert erased.status_code == 200, erased.text
    assert await counted(session, notification_id) == {"queued": 1, "cancelled": 1}

    url = f"/v1/notifications/{notification_id}/cancel"
    assert (await client.post(url, headers=sender.headers)).status_code == 200
    assert await counted(session, notification_id) == {"cancelled": 2}


async def test_deleted_messages_are_counted_and_a_deleted_notification_leaves_no_tallies(
    client: httpx.AsyncClient, sender: TenantKey, session: AsyncSession
) -> None:
    notification_id, _ = await dispatched(client, session, sender, list(ADDRESSES))
    # One recipient's messages deleted (messages name their recipient without a foreign key,
    # so they go by themselves or with their notification).
    one_recipients = text(
        "DELETE FROM messages WHERE notification_id = :n AND recipient_id ="
        " (SELECT id FROM recipients WHERE tenant_id = :t AND external_id = :e)"
    )
    await session.execute(one_recipients, {"n": notification_id, "t": sender.tenant_id, "e": "ok"})
    await session.commit()
    assert await counted(session, notification_id) == {"queued": 2}

    # Deleting the notification cascades to its messages, whose trigger must not count (nor
    # refer to) a notification that is gone; its tallies go with it.
    await session.execute(text("DELETE FROM notifications WHERE id = :n"), {"n": notification_id})
    await session.commit()
    assert await tally_rows(session, notification_id) == 0

    # Both deletions in one transaction, in either order.
    for first, then in (("messages", "notifications"), ("notifications", "messages")):
        notification_id, _ = await dispatched(client, session, sender, ["bad", "flaky"])
        statements = {
            "messages": one_recipients,
            "notifications": text("DELETE FROM notifications WHERE id = :n"),
        }
        params = {"t": sender.tenant_id, "n": notification_id, "e": "bad"}
        await session.execute(statements[first], params)
        await session.execute(statements[then], params)
        await session.commit()
        assert await tally_rows(session, notification_id) == 0


async def test_writers_racing_each_other_and_compaction_keep_exact_counts(
    client: httpx.AsyncClient, sender: TenantKey, session: AsyncSession, engine: AsyncEngine
) -> None:
    people = [{"external_id": f"crowd-{n}", "email": f"crowd-{n}@example.com"} for n in range(300)]
    added = await client.post(
        "/v1/recipients/batch", headers=sender.headers, json={"recipients": people}
    )
    assert added.status_code == 200, added.text
    notification_id, ids = await dispatched(
        client, session, sender, [p["external_id"] for p in people]
    )
    assert len(ids) == 300
    sessions = session_factory(engine)
    await compact_tallies({"sessions": sessions})  # earlier tests' deltas: out of the way

    # Six workers claim the same messages at once: each is claimed by one of them.
    async def claim_all(seed: int) -> int:
        order = random.Random(seed).sample(ids, len(ids))
        async with sessions() as mine:
            taken = 0
            for start in range(0, len(order), 50):
                taken += len(await claim(mine, order[start : start + 50]))
                await mine.commit()
            return taken

    assert sum(await asyncio.gather(*(claim_all(seed) for seed in range(6)))) == 300
    assert await counted(session, notification_id) == {"sending": 300}

    # Then they move overlapping sets of them between statuses while compaction folds.
    racing = True

    async def flip(seed: int) -> None:
        chance = random.Random(seed)
        async with sessions() as mine:
            for _ in range(40):
                await mine.execute(
                    _MOVE,
                    {
                        "ids": chance.sample(ids, 25),
                        "status": chance.choice(["sent", "failed", "retrying", "queued"]),
                    },
                )
                await mine.commit()

    async def fold() -> int:
        folded, after = 0, 0
        async with sessions() as mine:
            while racing:
                done = await tallies.compact(mine, after=after, limit=7)
                await mine.commit()
                folded += done.notifications
                after = done.last_id if done.last_id is not None and done.seen == 7 else 0
                await asyncio.sleep(0)
        return folded

    folding = [asyncio.create_task(fold()) for _ in range(2)]  # two folds race each other too
    await asyncio.gather(*(flip(seed) for seed in range(6)))
    racing = False
    assert sum(await asyncio.gather(*folding)) > 0
    before = await counted(session, notification_id)
    assert sum(before.values()) == 300

    await compact_tallies({"sessions": sessions})
    assert await counted(session, notification_id) == before
    assert await tally_rows(session, notification_id) == len(before)  # one row per status


# A worker's write of many messages at once, locking them in id order as the erasure does,
# so that racing writers wait for each other instead of deadlocking.
_MOVE = text(
    """
    UPDATE messages AS m SET status = :status, updated_at = now()
      FROM (SELECT id FROM messages WHERE id = ANY(:ids) ORDER BY id FOR UPDATE) AS locked
     WHERE m.id = locked.id
    """
)


async def test_a_held_notification_row_holds_compaction_back_and_no_writer(
    client: httpx.AsyncClient, sender: TenantKey, session: AsyncSession, engine: AsyncEngine
) -> None:
    notification_id, ids = await dispatched(client, session, sender, ["ok", "flaky"])
    sessions = session_factory(engine)
    async with sessions() as holder, sessions() as writer:
        # What dispatch, cancel and pause do while they run.
        await holder.execute(
            text("SELECT 1 FROM notifications WHERE id = :n FOR UPDATE"), {"n": notification_id}
        )
        await writer.execute(text("SET LOCAL lock_timeout = '2s'"))
        assert len(await claim(writer, ids)) == 2  # its tallies take no lock of the notification
        await writer.commit()
        await compact_tallies({"sessions": sessions})
        assert await tally_rows(session, notification_id) > 2  # skipped, not folded
        await holder.rollback()
    await compact_tallies({"sessions": sessions})
    assert await counted(session, notification_id) == {"sending": 2}
    assert await tally_rows(session, notification_id) == 1


async def test_compaction_goes_past_what_it_cannot_fold_in_bounded_rounds(
    client: httpx.AsyncClient, sender: TenantKey, session: AsyncSession, engine: AsyncEngine
) -> None:
    sessions = session_factory(engine)
    await compact_tallies({"sessions": sessions})  # earlier tests' deltas: out of the way
    held_id, held = await dispatched(client, session, sender, ["ok"])
    free_id, free = await dispatched(client, session, sender, ["bad"])
    for ids in (held, free, held, free):
        async with sessions() as mine:
            await mine.execute(_MOVE, {"ids": ids, "status": "retrying"})
            await mine.execute(_MOVE, {"ids": ids, "status": "queued"})
            await mine.commit()
    async with sessions() as holder:
        await holder.execute(
            text("SELECT 1 FROM notifications WHERE id = :n FOR UPDATE"), {"n": held_id}
        )
        # Rounds of two deltas: the held notification's oldest ones come first, are skipped,
        # and the rounds after them reach the free one's.
        await compact_tallies({"sessions": sessions}, limit=2, rounds=1_000)
        assert await tally_rows(session, free_id) == 1
        assert await tally_rows(session, held_id) > 1
        await holder.rollback()
    assert await counted(session, free_id) == {"queued": 1}
    assert await counted(session, held_id) == {"queued": 1}


async def test_compaction_reads_through_its_indexes(session: AsyncSession) -> None:
    # The table here is tiny: forbid the whole-table scans the planner would rather do, and
    # see that the oldest deltas are a range of the partial index and the rows of their
    # notifications are looked up by id, not found by reading every row.
    await session.execute(text("SET LOCAL enable_seqscan = off"))
    await session.execute(text("SET LOCAL enable_bitmapscan = off"))
    plan = "\n".join(
        row[0]
        for row in await session.execute(
            text(f"EXPLAIN {tallies._COMPACT.text}"), {"after": 0, "limit": 5_000}
        )
    )
    await session.rollback()
    assert "Index Scan using ix_message_tallies_deltas" in plan, plan
    assert "Index Scan using ix_message_tallies_notification_id" in plan, plan
    assert "Index Cond: (notification_id = ANY (" in plan, plan
