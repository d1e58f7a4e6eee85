"""The outbox relay and the sweeper rebuild the queue from PostgreSQL after Redis loses it.

Real PostgreSQL and Redis (FLUSHDB is the lost queue), real in-process arq workers, and the
webhook channel delivering to a local receiver that counts requests per message id
(`webhook-id`). The relay and the sweeper read every tenant's rows, so this module runs on
a database of its own: what earlier tests left behind would be swept too, and delivered
with these tests' settings.
"""

from __future__ import annotations

import asyncio
import collections
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from arq import ArqRedis
from litestar import Litestar
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.db import create_engine, session_factory, utcnow
from app.delivery import outbox, sweeper
from app.delivery.claims import claim
from app.main import create_app
from app.migrate import upgrade
from app.notifications import relay
from app.notifications.dispatch import dispatch
from app.notifications.models import Attempt, Message, Notification
from app.runtime import ServiceUrls
from app.settings import Settings
from app.tenants.models import Tenant
from jobs import cron, queues
from jobs.worker import build_worker
from tests.conftest import create_database, drop_database
from tests.fakes import FakeProvider
from tests.queue_traffic import queue_traffic
from tests.send_path import drain, notification, notify, put_recipient, put_template, workers
from tests.support import TenantKey, make_tenant, serving, settings_for, unmetered_renderer

LONG_AGO = timedelta(minutes=5)  # further back than any threshold of the relay or sweeper


@pytest.fixture(scope="module")
async def own_urls(
    server_urls: ServiceUrls, service_urls: ServiceUrls
) -> AsyncIterator[ServiceUrls]:
    name = f"herald_relay_{uuid.uuid4().hex[:8]}"
    database_url = await create_database(server_urls.database_url, name)
    await asyncio.to_thread(upgrade, database_url)
    yield ServiceUrls(database_url, service_urls.redis_url)
    await drop_database(server_urls.database_url, name)


@pytest.fixture(scope="module")
def own_settings(own_urls: ServiceUrls) -> Settings:
    return settings_for(own_urls.database_url, own_urls.redis_url, HERALD_ALLOW_PRIVATE_URLS="true")


@pytest.fixture(scope="module")
async def own_app(own_settings: Settings) -> AsyncIterator[Litestar]:
    async with serving(create_app(own_settings)) as application:
        yield application


@pytest.fixture
async def api(own_app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=own_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://herald.test") as client:
        yield client


@pytest.fixture(scope="module")
async def own_engine(own_urls: ServiceUrls) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(own_urls.database_url)
    yield engine
    await engine.dispose()


@pytest.fixture
async def db(own_engine: AsyncEngine) -> AsyncIterator[AsyncSession]:
    async with session_factory(own_engine)() as session:
        yield session


@pytest.fixture
async def redis(own_urls: ServiceUrls) -> AsyncIterator[ArqRedis]:
    pool = await queues.connect(own_urls.redis_url)
    yield pool
    await pool.aclose()


@pytest.fixture
async def ctx(own_settings: Settings) -> AsyncIterator[dict[str, Any]]:
    """A worker process's context (drain's workers add their own Redis pool to it)."""
    async with workers(own_settings) as worker_ctx:
        yield worker_ctx


@pytest.fixture
def receiver() -> Iterator[FakeProvider]:
    hook = FakeProvider().start()
    yield hook
    hook.stop()


def with_redis(ctx: dict[str, Any], redis: ArqRedis) -> dict[str, Any]:
    """What a cron job gets from arq: the worker's context and its Redis pool."""
    return {**ctx, "redis": redis}


async def webhook_tenant(
    api: httpx.AsyncClient,
    db: AsyncSession,
    receiver: FakeProvider,
    name: str,
    recipients: list[str],
) -> TenantKey:
    tenant = await make_tenant(db, name)
    created = await api.post(
        "/v1/providers",
        headers=tenant.headers,
        json={"channel": "webhook", "provider": "webhook", "name": "hooks"},
    )
    assert created.status_code == 201, created.text
    await put_template(api, tenant, "event", {"webhook": {"body": {"event": "{{ what }}"}}})
    for external_id in recipients:
        await put_recipient(api, tenant, external_id, webhook_url=f"{receiver.url}/hook")
    return tenant


def deliveries(receiver: FakeProvider) -> collections.Counter[str]:
    """Requests the receiver got, per message id."""
    return collections.Counter(headers["webhook-id"] for _, _, headers, _ in receiver.requests)


async def message_ids(
    api: httpx.AsyncClient, tenant: TenantKey, notification_id: str
) -> list[uuid.UUID]:
    view = await notification(api, tenant, notification_id)
    return sorted(uuid.UUID(m["id"]) for m in view["messages"])


async def attempts_of(db: AsyncSession, message_id: uuid.UUID) -> list[tuple[int, str, str | None]]:
    rows = await db.execute(
        select(Attempt.n, Attempt.outcome, Attempt.error_class)
        .where(Attempt.message_id == message_id)
        .order_by(Attempt.id)
    )
    return [(row.n, row.outcome, row.error_class) for row in rows]


async def queued_job_ids(redis: ArqRedis) -> set[str]:
    return {
        job.decode()
        for name in queues.QUEUE_NAMES.values()
        for job in await redis.zrange(name, 0, -1)
    }


async def enqueued_by_the_api(redis: ArqRedis, *accepted: dict[str, Any]) -> None:
    """Wait for the API's dispatch jobs: it enqueues them after answering (then FLUSHDB
    is the loss of jobs that were in Redis, not a race with their arrival)."""
    wanted = {f"dispatch:{a['id']}" for a in accepted}
    for _ in range(100):
        if wanted <= await queued_job_ids(redis):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the API did not enqueue {wanted - await queued_job_ids(redis)}")


async def test_relay_dispatches_a_notification_whose_enqueue_was_lost(
    api: httpx.AsyncClient,
    db: AsyncSession,
    redis: ArqRedis,
    ctx: dict[str, Any],
    own_urls: ServiceUrls,
    receiver: FakeProvider,
) -> None:
    tenant = await webhook_tenant(api, db, receiver, "Relayed", ["r1", "r2"])
    accepted = await notify(api, tenant, template="event", to=["r1", "r2"], data={"what": "a"})
    job = f"dispatch:{accepted['id']}"
    await enqueued_by_the_api(redis, accepted)
    await redis.flushdb()  # Redis lost it before any worker ran

    # Too young: the API's own enqueue may still be on its way.
    assert await cron.relay(with_redis(ctx, redis)) == 0
    await db.execute(
        update(Notification)
        .where(Notification.id == uuid.UUID(accepted["id"]))
        .values(created_at=Notification.created_at - LONG_AGO)
    )
    await db.commit()
    assert await cron.relay(with_redis(ctx, redis)) == 1
    assert job in await queued_job_ids(redis)
    # Still queued: the same job id is refused, so a second tick adds nothing.
    assert await cron.relay(with_redis(ctx, redis)) == 0

    await drain(ctx, own_urls.redis_url)
    view = await notification(api, tenant, accepted["id"])
    assert view["status"] == "dispatched"
    assert view["counts"] == {"sent": 2}
    ids = await message_ids(api, tenant, accepted["id"])
    assert deliveries(receiver) == {str(i): 1 for i in ids}
    # Dispatched: nothing left for the relay.
    assert await relay.stale_accepted(db, older_than=timedelta(0), limit=10) == []


async def test_a_scheduled_notification_survives_a_flush_and_is_not_sent_early(
    api: httpx.AsyncClient,
    db: AsyncSession,
    redis: ArqRedis,
    ctx: dict[str, Any],
    own_urls: ServiceUrls,
    receiver: FakeProvider,
) -> None:
    tenant = await webhook_tenant(api, db, receiver, "Scheduled", ["s1"])
    send_at = datetime.now(UTC) + timedelta(seconds=2)
    accepted = await notify(
        api, tenant, template="event", to=["s1"], data={"what": "b"}, send_at=send_at.isoformat()
    )
    await enqueued_by_the_api(redis, accepted)
    await redis.flushdb()

    # Not due yet, even with no grace at all: nothing to relay, nothing sent.
    assert await cron.relay(with_redis(ctx, redis), older_than=timedelta(0)) == 0
    assert f"dispatch:{accepted['id']}" not in await queued_job_ids(redis)
    await drain(ctx, own_urls.redis_url)
    assert (await notification(api, tenant, accepted["id"]))["status"] == "accepted"
    assert receiver.requests == []

    await asyncio.sleep(max(0.0, (send_at - datetime.now(UTC)).total_seconds()) + 0.2)
    assert await cron.relay(with_redis(ctx, redis), older_than=timedelta(0)) == 1
    await drain(ctx, own_urls.redis_url)
    view = await notification(api, tenant, accepted["id"])
    [message] = view["messages"]
    assert message["status"] == "sent"
    assert datetime.fromisoformat(message["sent_at"]) >= send_at
    assert deliveries(receiver) == {message["id"]: 1}


async def test_sweep_requeues_an_expired_claim_and_records_the_lost_attempt(
    api: httpx.AsyncClient,
    db: AsyncSession,
    redis: ArqRedis,
    ctx: dict[str, Any],
    own_urls: ServiceUrls,
    receiver: FakeProvider,
) -> None:
    tenant = await webhook_tenant(api, db, receiver, "Crashed", ["c1"])
    accepted = await notify(api, tenant, template="event", to=["c1"], data={"what": "c"})
    await enqueued_by_the_api(redis, accepted)
    await redis.flushdb()
    await dispatch(db, notification_id=uuid.UUID(accepted["id"]), renderer=unmetered_renderer())
    await db.commit()
    [message_id] = await message_ids(api, tenant, accepted["id"])
    # A worker claims the message and dies before sending; later its lease runs out.
    assert [m.id for m in await claim(db, [message_id])] == [message_id]
    await db.commit()
    assert await cron.sweep(with_redis(ctx, redis)) == {"expired_claim": 0, "overdue": 0}
    await db.execute(
        update(Message)
        .where(Message.id == message_id)
        .values(claimed_until=Message.claimed_until - LONG_AGO)
    )
    await db.commit()

    assert await cron.sweep(with_redis(ctx, redis)) == {"expired_claim": 1, "overdue": 0}
    [released] = (await notification(api, tenant, accepted["id"]))["messages"]
    assert (released["status"], released["attempts"], released["error_class"]) == (
        "retrying",
        1,
        "transient",
    )
    assert [j for j in await queued_job_ids(redis) if j.startswith(f"sweep:{message_id}:1:")]
    # Released once: the next sweep finds nothing.
    assert await cron.sweep(with_redis(ctx, redis)) == {"expired_claim": 0, "overdue": 0}

    await drain(ctx, own_urls.redis_url)
    [sent] = (await notification(api, tenant, accepted["id"]))["messages"]
    assert (sent["status"], sent["attempts"]) == ("sent", 2)
    assert deliveries(receiver) == {str(message_id): 1}
    assert await attempts_of(db, message_id) == [(1, "lost", "transient"), (2, "sent", None)]


async def test_sweep_requeues_retries_whose_deferred_job_was_flushed(
    api: httpx.AsyncClient,
    db: AsyncSession,
    redis: ArqRedis,
    ctx: dict[str, Any],
    own_urls: ServiceUrls,
    receiver: FakeProvider,
) -> None:
    tenant = await webhook_tenant(api, db, receiver, "Retried", ["d1", "d2"])
    receiver.answer(503)
    accepted = await notify(api, tenant, template="event", to=["d1", "d2"], data={"what": "d"})
    await drain(ctx, own_urls.redis_url)
    ids = await message_ids(api, tenant, accepted["id"])
    view = await notification(api, tenant, accepted["id"])
    assert view["counts"] == {"retrying": 2}
    assert any(j.startswith("retry:") for j in await queued_job_ids(redis))
    await redis.flushdb()  # the deferred retries are gone

    # Not overdue yet: their retry time has not even come.
    assert await cron.sweep(with_redis(ctx, redis)) == {"expired_claim": 0, "overdue": 0}
    await db.execute(
        update(Message)
        .where(Message.id.in_(ids))
        .values(next_attempt_at=Message.next_attempt_at - LONG_AGO - timedelta(hours=1))
    )
    await db.commit()
    receiver.answer(204)
    refused = len(receiver.requests)
    assert await cron.sweep(with_redis(ctx, redis)) == {"expired_claim": 0, "overdue": 2}
    # Stamped due now: the next sweep does not enqueue them again.
    assert await cron.sweep(with_redis(ctx, redis)) == {"expired_claim": 0, "overdue": 0}

    await drain(ctx, own_urls.redis_url)
    view = await notification(api, tenant, accepted["id"])
    assert view["counts"] == {"sent": 2}
    # One delivery each after the 503s (one each, unless a retry came due within the drain).
    delivered = collections.Counter(h["webhook-id"] for _, _, h, _ in receiver.requests[refused:])
    assert delivered == {str(i): 1 for i in ids}
    for message_id in ids:
        *failed, last = await attempts_of(db, message_id)
        assert failed and set(failed) == {(n, "failed", "transient") for n, _, _ in failed}
        assert last == (len(failed) + 1, "sent", None)


async def test_sweep_holds_a_paused_channel_and_requeues_it_once_lifted(
    api: httpx.AsyncClient,
    db: AsyncSession,
    redis: ArqRedis,
    ctx: dict[str, Any],
    own_urls: ServiceUrls,
    receiver: FakeProvider,
) -> None:
    paused = await webhook_tenant(api, db, receiver, "Paused", ["p1", "p2", "p3"])
    flowing = await webhook_tenant(api, db, receiver, "Flowing", ["f1"])
    held = await notify(api, paused, template="event", to=["p1", "p2", "p3"], data={"what": "e"})
    other = await notify(api, flowing, template="event", to=["f1"], data={"what": "e"})
    await enqueued_by_the_api(redis, held, other)
    await redis.flushdb()
    for accepted in (held, other):
        await dispatch(db, notification_id=uuid.UUID(accepted["id"]), renderer=unmetered_renderer())
        await db.commit()
    lost_claim, never_claimed, overdue_retry = await message_ids(api, paused, held["id"])
    [flowing_id] = await message_ids(api, flowing, other["id"])
    # One paused message was claimed by a worker that died, before the pause.
    assert [m.id for m in await claim(db, [lost_claim])] == [lost_claim]
    await db.execute(
        update(Message)
        .where(Message.id == lost_claim)
        .values(claimed_until=Message.claimed_until - LONG_AGO)
    )
    await db.execute(
        update(Message)
        .where(Message.id == overdue_retry)
        .values(status="retrying", attempts=1, next_attempt_at=utcnow() - LONG_AGO)
    )
    # Rows written before dispatch set next_attempt_at: due since they were created.
    await db.execute(
        update(Message)
        .where(Message.id.in_([never_claimed, flowing_id]))
        .values(next_attempt_at=None, created_at=Message.created_at - LONG_AGO)
    )
    await db.execute(
        update(Tenant)
        .where(Tenant.id == paused.tenant_id)
        .values(kill_switches={"webhook": "pause"})
    )
    await db.commit()

    # The neighbour's message goes; the paused ones are held (the claim is released).
    assert await cron.sweep(with_redis(ctx, redis)) == {"expired_claim": 0, "overdue": 1}
    await drain(ctx, own_urls.redis_url)
    assert deliveries(receiver) == {str(flowing_id): 1}
    statuses = {
        m["id"]: m["status"] for m in (await notification(api, paused, held["id"]))["messages"]
    }
    assert statuses == {
        str(lost_claim): "retrying",
        str(never_claimed): "queued",
        str(overdue_retry): "retrying",
    }
    assert await attempts_of(db, lost_claim) == [(1, "lost", "transient")]

    # Lifted, and the resume's own enqueue lost too: once overdue, the sweeper sends them.
    await db.execute(update(Tenant).where(Tenant.id == paused.tenant_id).values(kill_switches={}))
    await db.execute(
        update(Message)
        .where(Message.id == lost_claim)
        .values(next_attempt_at=Message.next_attempt_at - LONG_AGO)
    )
    await db.commit()
    await redis.flushdb()
    assert await cron.sweep(with_redis(ctx, redis)) == {"expired_claim": 0, "overdue": 3}
    await drain(ctx, own_urls.redis_url)
    assert deliveries(receiver) == {
        str(i): 1 for i in (flowing_id, lost_claim, never_claimed, overdue_retry)
    }
    assert (await notification(api, paused, held["id"]))["counts"] == {"sent": 3}


@pytest.mark.parametrize(
    ("statement", "params", "index", "conditions"),
    [
        (
            relay._STALE,
            {"older_than": timedelta(seconds=10), "limit": 1000},
            "ix_notifications_pending",
            ["(created_at < "],
        ),
        (
            sweeper._EXPIRED,
            {"limit": 1000, "error": "x", "default_max": 8},
            "ix_messages_claims",
            ["(claimed_until < now())"],
        ),
        (
            sweeper._OVERDUE,
            {"older_than": timedelta(seconds=60), "limit": 1000},
            "ix_messages_due",
            ["((next_attempt_at < ", "(next_attempt_at IS NULL)"],
        ),
    ],
)
async def test_queries_select_through_their_partial_index(
    db: AsyncSession, statement: Any, params: dict[str, Any], index: str, conditions: list[str]
) -> None:
    # The tables here are tiny: forbid the whole-table scans the planner would rather do, and
    # see whether the partial index can serve each condition as an Index Cond (a range, not a
    # filter over every row it holds).
    await db.execute(text("SET LOCAL enable_seqscan = off"))
    await db.execute(text("SET LOCAL enable_bitmapscan = off"))
    plan = [row[0] for row in await db.execute(text(f"EXPLAIN {statement.text}"), params)]
    await db.rollback()
    index_conds = []
    for n, line in enumerate(plan):
        if re.search(rf"\busing {index}\b", line) and n + 1 < len(plan):
            index_conds.append(plan[n + 1].strip())  # EXPLAIN puts it right under the scan
    for condition in conditions:
        assert any(c.startswith(f"Index Cond: {condition}") for c in index_conds), "\n".join(plan)


async def test_a_cron_tick_runs_once_across_queues(
    redis: ArqRedis, ctx: dict[str, Any], own_urls: ServiceUrls
) -> None:
    """Workers of two queues both schedule the relay; a tick runs once, even when the second
    worker's heartbeat comes after the first one's run has finished."""
    await redis.flushdb()
    high, normal = (
        build_worker(q, redis_url=own_urls.redis_url, ctx=with_redis(ctx, redis))
        for q in ("high", "normal")
    )
    for worker in (high, normal):
        worker._pool = redis  # what Worker.main() would connect
    start = datetime.now(tz=high.timezone) - timedelta(seconds=30)
    for worker in (high, normal):
        await worker.run_cron(start, 0.5)  # the first heartbeat only plans the next tick
    [tick] = {cj.next_run for cj in high.cron_jobs if cj.name == "cron:relay"}
    assert tick is not None
    job_id = f"cron:relay:{int(tick.timestamp() * 1000)}"

    await high.run_cron(tick, 0.5)
    assert job_id in {j.decode() for j in await redis.zrange(queues.QUEUE_NAMES["high"], 0, -1)}
    await normal.run_cron(tick, 0.5)  # the same tick, while it is queued on high
    assert await redis.zcard(queues.QUEUE_NAMES["normal"]) == 0

    await high.start_jobs(await redis.zrange(queues.QUEUE_NAMES["high"], 0, -1))
    await asyncio.gather(*high.tasks.values())
    assert high.jobs_complete >= 1 and high.jobs_failed == 0
    assert job_id not in {j.decode() for j in await redis.zrange(queues.QUEUE_NAMES["high"], 0, -1)}
    # A late heartbeat on the other queue, after the run: still refused. (Only the relay's
    # tick is replayed; the sweep's next tick may not have run on high.)
    for cron_job in normal.cron_jobs:
        cron_job.next_run = tick if cron_job.name == "cron:relay" else tick + timedelta(hours=1)
    await normal.run_cron(tick, 0.5)
    assert await redis.zcard(queues.QUEUE_NAMES["normal"]) == 0


async def test_a_claim_lost_with_the_budget_spent_goes_to_the_dead_letter_queue(
    api: httpx.AsyncClient,
    db: AsyncSession,
    redis: ArqRedis,
    ctx: dict[str, Any],
    receiver: FakeProvider,
) -> None:
    """A message that kills every worker that claims it must stop being handed out."""
    tenant = await webhook_tenant(api, db, receiver, "Poison", ["p1"])
    policy = await api.put(
        "/v1/tenant/retry-policy", headers=tenant.headers, json={"max_attempts": 2}
    )
    assert policy.status_code == 200, policy.text
    accepted = await notify(api, tenant, template="event", to=["p1"], data={"what": "p"})
    await enqueued_by_the_api(redis, accepted)
    await redis.flushdb()
    await dispatch(db, notification_id=uuid.UUID(accepted["id"]), renderer=unmetered_renderer())
    await db.commit()
    [message_id] = await message_ids(api, tenant, accepted["id"])
    outcomes = []
    for _ in range(2):  # claimed, the worker dies, the lease runs out; twice
        assert [m.id for m in await claim(db, [message_id])] == [message_id]
        await db.execute(
            update(Message)
            .where(Message.id == message_id)
            .values(claimed_until=Message.claimed_until - LONG_AGO)
        )
        await db.commit()
        outcomes.append(await cron.sweep(with_redis(ctx, redis)))
        await db.execute(update(Message).values(next_attempt_at=None))
        await db.commit()
    # The first loss is retried; the second spent the budget of two: dead-lettered, not queued.
    assert outcomes == [{"expired_claim": 1, "overdue": 0}, {"expired_claim": 0, "overdue": 0}]
    [dead] = (await notification(api, tenant, accepted["id"]))["messages"]
    assert (dead["status"], dead["attempts"], dead["error_class"]) == ("failed", 2, "transient")
    assert await attempts_of(db, message_id) == [
        (1, "lost", "transient"),
        (2, "lost", "transient"),
    ]
    assert receiver.requests == []


async def test_a_tick_enqueues_in_one_redis_round_trip(
    api: httpx.AsyncClient,
    db: AsyncSession,
    redis: ArqRedis,
    ctx: dict[str, Any],
    own_urls: ServiceUrls,
    receiver: FakeProvider,
) -> None:
    """Three lost dispatches, then 250 lost deliveries (three deliver jobs): each tick
    hands all it found to Redis in one call."""
    tenant = await webhook_tenant(api, db, receiver, "Batched", [])
    many = [
        {"external_id": f"b{i}", "webhook_url": f"{receiver.url}/hook"}
        for i in range(2 * outbox.BATCH_SIZE + 50)
    ]
    big = await notify(api, tenant, template="event", to=many, data={"what": "b"})
    small = [
        await notify(api, tenant, template="event", to=["b0"], data={"what": str(i)})
        for i in range(2)
    ]
    await enqueued_by_the_api(redis, big, *small)
    await redis.flushdb()
    ids = [uuid.UUID(a["id"]) for a in (big, *small)]
    await db.execute(
        update(Notification)
        .where(Notification.id.in_(ids))
        .values(created_at=Notification.created_at - LONG_AGO)
    )
    await db.commit()
    async with queue_traffic(own_urls.redis_url) as traffic:
        assert await cron.relay(with_redis(ctx, redis)) == 3
    assert traffic.round_trips == 1
    assert {f"dispatch:{i}" for i in ids} <= await queued_job_ids(redis)

    await redis.flushdb()  # lost again, after dispatch wrote the messages
    for notification_id in ids:
        await dispatch(db, notification_id=notification_id, renderer=unmetered_renderer())
        await db.commit()
    await db.execute(
        update(Message)
        .where(Message.notification_id.in_(ids))
        .values(next_attempt_at=utcnow() - LONG_AGO)
    )
    await db.commit()
    async with queue_traffic(own_urls.redis_url) as traffic:
        counts = await cron.sweep(with_redis(ctx, redis))
    assert counts == {"expired_claim": 0, "overdue": 252}
    assert traffic.round_trips == 1
    swept = [j for j in await queued_job_ids(redis) if j.startswith("sweep:")]
    assert sorted(int(j.split(":")[2]) for j in swept) == [52, 100, 100]

    await redis.flushdb()  # delivering them is the other tests' subject
