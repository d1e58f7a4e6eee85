"""Usage metering and quotas, through the API and the real dispatch job: what counts (live,
queued, once), where it is kept (Redis, then usage_counts exactly once), and what intake
refuses (a blocking plan's quota, atomically across concurrent requests)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import text, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.db import session_factory, utcnow
from app.runtime import ServiceUrls
from app.tenants import plans
from app.tenants.models import Tenant
from app.usage import service
from app.usage.meter import (
    DELTA,
    PREFIX,
    Count,
    Meter,
    Refusal,
    Reservation,
    next_period_start,
    period_of,
)
from jobs import functions, queues
from tests.send_path import put_recipient, put_template, workers
from tests.support import TenantKey, assert_problem, key_of, make_tenant, plans_with, settings_for

INBOX = {"inbox": {"title": "Hi", "body": "Hello"}}

# The shipped plans plus one with small quotas, so that a test reaches them quickly.
QUOTA_PLAN = """
[plans.quota-test]
api_rate = 10000
api_burst = 10000
send_rate = 1000
send_burst = 1000
render_ms_rate = 1000
render_ms_burst = 20000
log_retention_days = 7
overage = "block"

[plans.quota-test.quota]
inbox = 1000
"""


@pytest.fixture(scope="module", autouse=True)
def quota_plans(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with plans_with(tmp_path_factory.mktemp("plans"), QUOTA_PLAN):
        yield


@pytest.fixture
async def redis(service_urls: ServiceUrls) -> AsyncIterator[Redis]:
    client = Redis.from_url(service_urls.redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def meter(redis: Redis) -> Meter:
    return Meter(redis)


async def on_plan(session: AsyncSession, plan: str, mode: str = "live") -> TenantKey:
    """A tenant on `plan`, set before its key is first used (keys cache the plan)."""
    tenant = await make_tenant(session, f"usage {uuid.uuid4().hex[:6]}", mode=mode)
    await session.execute(update(Tenant).where(Tenant.id == tenant.tenant_id).values(plan=plan))
    await session.commit()
    return tenant


async def send(client: httpx.AsyncClient, key: TenantKey, to: list[str]) -> httpx.Response:
    body = {"template": "hi", "to": to, "channels": ["inbox"]}
    return await client.post("/v1/notifications", headers=key.headers, json=body)


async def dispatch(service_urls: ServiceUrls, notification_ids: list[str]) -> None:
    """Run the real dispatch job for each notification (delivery is not run)."""
    settings = settings_for(service_urls.database_url, service_urls.redis_url)
    async with workers(settings) as ctx:
        ctx["redis"] = await queues.connect(service_urls.redis_url)
        try:
            for notification_id in notification_ids:
                await functions.dispatch(ctx, notification_id)
        finally:
            await ctx["redis"].aclose()


async def usage_of(client: httpx.AsyncClient, key: TenantKey) -> dict[str, Any]:
    response = await client.get("/v1/usage", headers=key.headers)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def channel(usage: dict[str, Any], name: str) -> dict[str, Any]:
    [found] = [c for c in usage["channels"] if c["channel"] == name]
    return found


async def flushed(engine: AsyncEngine, tenant_id: uuid.UUID) -> dict[str, int]:
    async with session_factory(engine)() as session:
        return await service.flushed_counts(
            session, tenant_id=tenant_id, period=period_of(utcnow())
        )


async def test_usage_shape_for_a_new_tenant(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    tenant = await on_plan(session, "free")
    usage = await usage_of(client, tenant)
    now = utcnow()
    assert usage["object"] == "usage"
    assert (usage["plan"], usage["overage"]) == ("free", "block")
    assert usage["period"] == period_of(now)
    assert usage["resets_at"] == next_period_start(period_of(now)).isoformat().replace(
        "+00:00", "Z"
    )
    assert [c["channel"] for c in usage["channels"]] == ["email", "sms", "push", "webhook", "inbox"]
    free = plans.plan("free")
    assert channel(usage, "email") == {
        "channel": "email",
        "used": 0,
        "quota": free.quota_for("email"),
        "remaining": free.quota_for("email"),
    }


async def test_the_1000th_passes_and_the_1001st_is_refused(
    client: httpx.AsyncClient, session: AsyncSession, service_urls: ServiceUrls
) -> None:
    tenant = await on_plan(session, "quota-test")
    await put_template(client, tenant, "hi", INBOX)
    # 999 ids held at intake (none exists: intake counts the ids it is given).
    first = await send(client, tenant, [f"r{i}" for i in range(999)])
    assert first.status_code == 202, first.text
    assert (await send(client, tenant, ["last"])).status_code == 202  # the 1,000th
    refused = await send(client, tenant, ["one-more"])  # the 1,001st
    problem = assert_problem(refused, 429, "quota_exceeded")
    reset = next_period_start(period_of(utcnow()))
    assert problem["channel"] == "inbox"
    assert problem["plan"] == "quota-test"
    assert problem["remaining"] == 0
    assert problem["resets_at"] == reset.isoformat().replace("+00:00", "Z")
    assert "inbox" in str(problem["detail"]) and "quota-test" in str(problem["detail"])
    assert int(refused.headers["retry-after"]) >= 1
    # Dispatch finds none of the 999: their hold goes back, and there is room again.
    await dispatch(service_urls, [first.json()["id"]])
    assert (await send(client, tenant, ["one-more"])).status_code == 202


async def test_a_hundred_parallel_requests_with_ten_left_let_exactly_ten_through(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    tenant = await on_plan(session, "quota-test")
    await put_template(client, tenant, "hi", INBOX)
    assert (await send(client, tenant, [f"r{i}" for i in range(990)])).status_code == 202
    answers = await asyncio.gather(*(send(client, tenant, [f"p{i}"]) for i in range(100)))
    codes = sorted(a.status_code for a in answers)
    assert codes.count(202) == 10 and codes.count(429) == 90, codes


async def test_a_batch_item_over_quota_is_refused_alone(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    tenant = await on_plan(session, "quota-test")
    await put_template(client, tenant, "hi", INBOX)
    items = [
        {"template": "hi", "to": [f"b{i}" for i in range(600)], "channels": ["inbox"]},
        {"template": "hi", "to": [f"c{i}" for i in range(600)], "channels": ["inbox"]},
        {"template": "hi", "to": ["d"], "channels": ["inbox"]},
    ]
    response = await client.post(
        "/v1/notifications/batch", headers=tenant.headers, json={"notifications": items}
    )
    assert response.status_code == 200, response.text
    statuses = [item["status"] for item in response.json()["data"]]
    assert statuses == [202, 429, 202]
    assert response.json()["data"][1]["error"]["type"].endswith("quota_exceeded")


async def test_queued_live_messages_count_once_however_often_dispatched_or_replayed(
    client: httpx.AsyncClient,
    session: AsyncSession,
    service_urls: ServiceUrls,
    engine: AsyncEngine,
    meter: Meter,
) -> None:
    tenant = await on_plan(session, "pro")
    await put_template(client, tenant, "hi", INBOX)
    for name in ("ann", "bob", "cy"):
        await put_recipient(client, tenant, name)
    accepted = await send(client, tenant, ["ann", "bob", "cy", "nobody"])
    assert accepted.status_code == 202
    notification_id = accepted.json()["id"]
    await dispatch(service_urls, [notification_id])
    await dispatch(service_urls, [notification_id])  # a retried job writes nothing again
    assert channel(await usage_of(client, tenant), "inbox")["used"] == 3
    # Replayed from the DLQ: the same messages go again, and are not counted again.
    ids = [
        str(i)
        for i in await session.scalars(
            text(
                "UPDATE messages SET status = 'failed', error_class = 'permanent' "
                "WHERE notification_id = :id RETURNING id"
            ),
            {"id": uuid.UUID(notification_id)},
        )
    ]
    await session.commit()
    replayed = await client.post("/v1/dlq/replay", headers=tenant.headers, json={"ids": ids})
    assert replayed.status_code == 200, replayed.text
    assert replayed.json()["replayed"] == 3
    await service.flush(session_factory(engine), meter)
    assert channel(await usage_of(client, tenant), "inbox")["used"] == 3
    assert (await flushed(engine, tenant.tenant_id)).get("inbox") == 3


async def test_test_mode_never_counts(
    client: httpx.AsyncClient,
    session: AsyncSession,
    service_urls: ServiceUrls,
    engine: AsyncEngine,
    meter: Meter,
    redis: Redis,
) -> None:
    tenant = await on_plan(session, "quota-test")
    test_key = await key_of(session, tenant, "test")
    await put_template(client, test_key, "hi", INBOX)
    await put_recipient(client, test_key, "ann")
    # Over the live quota, yet accepted: test mode has no quota.
    accepted = await send(client, test_key, ["ann", *(f"x{i}" for i in range(998))])
    assert accepted.status_code == 202, accepted.text
    more = await send(client, test_key, [f"y{i}" for i in range(999)])
    assert more.status_code == 202, more.text
    await dispatch(service_urls, [accepted.json()["id"]])
    fields = [f.decode() for f in await redis.hkeys(DELTA)]  # type: ignore[misc]
    assert not any(f.startswith(str(tenant.tenant_id)) for f in fields)
    await service.flush(session_factory(engine), meter)
    assert await flushed(engine, tenant.tenant_id) == {}
    assert channel(await usage_of(client, test_key), "inbox")["used"] == 0


async def test_rebuild_gives_the_live_counters(
    client: httpx.AsyncClient,
    session: AsyncSession,
    service_urls: ServiceUrls,
    engine: AsyncEngine,
    meter: Meter,
) -> None:
    tenant = await on_plan(session, "scale")
    await put_template(client, tenant, "hi", INBOX)
    for name in ("ann", "bob"):
        await put_recipient(client, tenant, name)
    ids = [(await send(client, tenant, ["ann", "bob"])).json()["id"] for _ in range(3)]
    await dispatch(service_urls, ids)
    live = channel(await usage_of(client, tenant), "inbox")["used"]
    assert live == 6
    await service.flush(session_factory(engine), meter)
    before = await flushed(engine, tenant.tenant_id)
    # Lost: PostgreSQL's figure is wiped and Redis's totals are gone; messages remain.
    async with session_factory(engine)() as other:
        await other.execute(
            text("DELETE FROM usage_counts WHERE tenant_id = :t"), {"t": tenant.tenant_id}
        )
        await other.commit()
    await meter.forget_totals(await meter.totals_keys(tenant.tenant_id, None))
    await service.rebuild(
        session_factory(engine), meter, tenant_id=tenant.tenant_id, period=period_of(utcnow())
    )
    assert await flushed(engine, tenant.tenant_id) == before == {"inbox": 6}
    assert channel(await usage_of(client, tenant), "inbox")["used"] == live


async def test_a_crash_between_redis_and_postgresql_loses_and_doubles_nothing(
    session: AsyncSession, engine: AsyncEngine, meter: Meter
) -> None:
    tenant = await on_plan(session, "pro")
    sessions = session_factory(engine)
    period = period_of(utcnow())
    await service.flush(sessions, meter)  # whatever other tests left
    await meter.record([Count(tenant.tenant_id, period, "email", 5)])
    # Crash 1: the deltas were moved into a flush, and the process died before PostgreSQL.
    [pending] = await meter.rotate()
    await meter.record([Count(tenant.tenant_id, period, "email", 2)])  # counted meanwhile
    assert await service.flush(sessions, meter) == 2  # the orphan, then the new deltas
    assert (await flushed(engine, tenant.tenant_id)) == {"email": 7}
    # Crash 2: PostgreSQL committed the flush, and the process died before deleting it.
    await meter.record([Count(tenant.tenant_id, period, "email", 3)])
    [pending] = await meter.rotate()
    assert await service.apply(sessions, meter, pending) is True
    assert await service.flush(sessions, meter) == 0  # PostgreSQL knows that id: skipped
    assert (await flushed(engine, tenant.tenant_id)) == {"email": 10}
    # And the totals seeded from PostgreSQL plus what is not flushed yet agree.
    await meter.record([Count(tenant.tenant_id, period, "email", 1)])
    used = await service.used(session, meter, tenant_id=tenant.tenant_id, period=period)
    assert used["email"] == 11


async def test_metering_off_counts_nothing_and_refuses_nothing(
    service_urls: ServiceUrls, session: AsyncSession, tmp_path: Path
) -> None:
    from app.main import create_app
    from tests.support import serving

    tenant = await on_plan(session, "quota-test")
    settings = settings_for(
        service_urls.database_url, service_urls.redis_url, HERALD_METERING="off"
    )
    assert settings.metering is False
    async with serving(create_app(settings)) as app:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://herald.test") as c:
            await put_template(c, tenant, "hi", INBOX)
            many = [f"m{i}" for i in range(1000)]
            assert (await send(c, tenant, many)).status_code == 202
            assert (await send(c, tenant, many[:5])).status_code == 202


async def test_the_cron_job_flushes_what_dispatch_counted(
    client: httpx.AsyncClient,
    session: AsyncSession,
    service_urls: ServiceUrls,
    engine: AsyncEngine,
) -> None:
    from jobs import cron

    tenant = await on_plan(session, "pro")
    await put_template(client, tenant, "hi", INBOX)
    await put_recipient(client, tenant, "ann")
    accepted = await send(client, tenant, ["ann"])
    settings = settings_for(service_urls.database_url, service_urls.redis_url)
    async with workers(settings) as ctx:
        ctx["redis"] = await queues.connect(service_urls.redis_url)
        try:
            await functions.dispatch(ctx, accepted.json()["id"])
            assert await flushed(engine, tenant.tenant_id) == {}
            assert await cron.flush_usage(ctx) >= 1
        finally:
            await ctx["redis"].aclose()
    assert await flushed(engine, tenant.tenant_id) == {"inbox": 1}
    assert "cron:flush_usage" in {job.name for job in cron.cron_jobs()}


async def test_herald_usage_rebuild_from_the_command_line(
    client: httpx.AsyncClient,
    session: AsyncSession,
    service_urls: ServiceUrls,
    engine: AsyncEngine,
) -> None:
    from click.testing import CliRunner

    from app.cli import main

    tenant = await on_plan(session, "pro")
    await put_template(client, tenant, "hi", INBOX)
    await put_recipient(client, tenant, "ann")
    await dispatch(service_urls, [(await send(client, tenant, ["ann"])).json()["id"]])
    env = {"DATABASE_URL": service_urls.database_url, "REDIS_URL": service_urls.redis_url}
    runner = CliRunner()
    bad = await asyncio.to_thread(
        runner.invoke, main, ["usage", "rebuild", "--period", "2026-13"], env=env
    )
    assert bad.exit_code == 2 and "YYYY-MM" in bad.output
    args = ["usage", "rebuild", "--tenant", str(tenant.tenant_id), "--period", period_of(utcnow())]
    done = await asyncio.to_thread(runner.invoke, main, args, env=env)
    assert done.exit_code == 0, done.output
    assert "rebuilt 1 usage counts" in done.output
    assert await flushed(engine, tenant.tenant_id) == {"inbox": 1}


async def test_a_broadcast_of_50_with_10_left_sends_10_and_skips_40_for_quota(
    client: httpx.AsyncClient, session: AsyncSession, service_urls: ServiceUrls
) -> None:
    tenant = await on_plan(session, "quota-test")
    await put_template(client, tenant, "hi", INBOX)
    for i in range(50):
        await put_recipient(client, tenant, f"fan{i:02d}")
    # 990 held by a list notification not dispatched yet: 10 left.
    assert (await send(client, tenant, [f"r{i}" for i in range(990)])).status_code == 202
    body = {"template": "hi", "to": {"all": True}, "channels": ["inbox"]}
    accepted = await client.post("/v1/notifications", headers=tenant.headers, json=body)
    assert accepted.status_code == 202, accepted.text
    await dispatch(service_urls, [accepted.json()["id"]])
    rows = (
        await session.execute(
            text(
                "SELECT status, skip_reason, count(*) FROM messages WHERE notification_id = :id"
                " GROUP BY 1, 2"
            ),
            {"id": uuid.UUID(accepted.json()["id"])},
        )
    ).all()
    by_status = {(status, reason): n for status, reason, n in rows}
    assert by_status.get(("skipped", "quota")) == 40, by_status
    assert sum(n for (status, _), n in by_status.items() if status != "skipped") == 10
    assert channel(await usage_of(client, tenant), "inbox")["used"] == 10
    # Nothing is left for a one-recipient send either.
    assert_problem(await send(client, tenant, ["late"]), 429, "quota_exceeded")


async def test_the_held_sums_follow_every_change_of_the_holds(meter: Meter, redis: Redis) -> None:
    """The quota check reads one running sum per channel instead of every hold: holding,
    taking, using up at dispatch, giving back and lapsing each keep it equal to the holds."""
    tenant, period = uuid.uuid4(), period_of(utcnow())
    await meter.seed(tenant, period, {})
    later = utcnow() + timedelta(hours=1)
    notes = [uuid.uuid4() for _ in range(4)]

    def ask(note: uuid.UUID, email: int, sms: int) -> Reservation:
        return Reservation(tenant, note, period, later, [("email", email, 100), ("sms", sms, 100)])

    assert await meter.reserve([ask(notes[0], 5, 2), ask(notes[1], 7, 0)]) == [None, None]
    assert await meter.take(Reservation(tenant, notes[2], period, later, [("email", 3, 100)]))
    await meter.record([Count(tenant, period, "email", 4, held_for=notes[0])])  # 1 left held
    await meter.record([Count(tenant, period, "email", 9, held_for=notes[1])])  # more than held
    await meter.release([(tenant, notes[2])])

    async def sums_and_holds() -> tuple[dict[str, int], dict[str, int]]:
        raw_sums = await redis.hgetall(f"{PREFIX}held:{tenant}")  # type: ignore[misc]
        sums = {k.decode(): int(v) for k, v in raw_sums.items() if int(v)}
        holds: dict[str, int] = {}
        raw = await redis.hgetall(f"{PREFIX}holds:{tenant}")  # type: ignore[misc]
        for field, n in raw.items():
            channel = field.decode().rsplit("|", 1)[1]
            holds[channel] = holds.get(channel, 0) + int(n)
        return sums, {k: v for k, v in holds.items() if v}

    sums, holds = await sums_and_holds()
    assert sums == holds == {"email": 1, "sms": 2}

    # A hold whose dispatch never came lapses at its expiry, and leaves the sums with it.
    await redis.zadd(f"{PREFIX}hold-expiry:{tenant}", {str(notes[3]): 0})  # type: ignore[misc]
    await redis.hset(f"{PREFIX}holds:{tenant}", f"{notes[3]}|email", 50)  # type: ignore[misc]
    await redis.hincrby(f"{PREFIX}held:{tenant}", "email", 50)  # type: ignore[misc]
    assert await meter.reserve([ask(uuid.uuid4(), 1, 0)]) == [None]
    sums, holds = await sums_and_holds()
    assert sums == holds == {"email": 2, "sms": 2}


async def test_one_reserve_call_answers_each_tenant_and_request_in_order(meter: Meter) -> None:
    """Intake reserves a whole batch in one script call, grouped by tenant: each request is
    answered for itself, in the order it came, whatever the tenants around it."""
    period = period_of(utcnow())
    first, second, unseeded = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await meter.seed(first, period, {"email": 95})
    await meter.seed(second, period, {"sms": 0})
    later = utcnow() + timedelta(hours=1)

    def ask(tenant: uuid.UUID, *wants: tuple[str, int, int]) -> Reservation:
        return Reservation(tenant, uuid.uuid4(), period, later, list(wants))

    answers = await meter.reserve(
        [
            ask(first, ("email", 3, 100)),  # 98 of 100
            ask(second, ("sms", 4, 5)),  # 4 of 5
            ask(unseeded, ("email", 1, 100)),
            ask(first, ("email", 3, 100)),  # 101: refused, 2 left
            ask(second, ("push", 1, 10), ("sms", 2, 5)),  # sms 6 of 5: refused, 1 left
            ask(first, ("email", 2, 100)),  # exactly 100
            ask(second, ("sms", 1, 5)),  # exactly 5
        ]
    )
    assert answers == [
        None,
        None,
        Refusal("", -1),
        Refusal("email", 2),
        Refusal("sms", 1),
        None,
        None,
    ]
    # A refused request held nothing: its push is still free.
    assert await meter.reserve([ask(second, ("push", 10, 10))]) == [None]
