"""Quota leases: far from a quota an API process hands out quota it leased from Redis, so
that an intake batch asks Redis nothing; near it, every request is checked in Redis.

Each test reads what Redis holds (the leases and the holds of single notifications) and
what the API answers; nothing of Herald's is patched.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import utcnow
from app.runtime import ServiceUrls
from app.tenants.models import Tenant
from app.usage import quota
from app.usage.meter import PREFIX, Meter, Refusal, Reservation, period_of
from tests.send_path import put_template
from tests.support import TenantKey, make_tenant, plans_with

INBOX = {"inbox": {"title": "Hi", "body": "Hello"}}
QUOTA = 1_000_000  # leases of 1,000, taken while 20,000 are left after them

LEASE_PLAN = f"""
[plans.lease-test]
api_rate = 10000
api_burst = 10000
send_rate = 1000
send_burst = 1000
render_ms_rate = 1000
render_ms_burst = 20000
log_retention_days = 7
overage = "block"

[plans.lease-test.quota]
inbox = {QUOTA}

[plans.lease-bigger]
api_rate = 10000
api_burst = 10000
send_rate = 1000
send_burst = 1000
render_ms_rate = 1000
render_ms_burst = 20000
log_retention_days = 7
overage = "block"

[plans.lease-bigger.quota]
inbox = {2 * QUOTA}
"""


@pytest.fixture(scope="module", autouse=True)
def lease_plans(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with plans_with(tmp_path_factory.mktemp("plans"), LEASE_PLAN):
        yield


@pytest.fixture
async def redis(service_urls: ServiceUrls) -> AsyncIterator[Redis]:
    client = Redis.from_url(service_urls.redis_url)
    yield client
    await client.aclose()


async def on_lease_plan(session: AsyncSession) -> TenantKey:
    tenant = await make_tenant(session, f"lease {uuid.uuid4().hex[:6]}", mode="live")
    await session.execute(
        update(Tenant).where(Tenant.id == tenant.tenant_id).values(plan="lease-test")
    )
    await session.commit()
    return tenant


async def holds(redis: Redis, tenant_id: uuid.UUID) -> dict[str, int]:
    raw = await redis.hgetall(f"{PREFIX}holds:{tenant_id}")  # type: ignore[misc]
    return {k.decode(): int(v) for k, v in raw.items()}


async def send(client: httpx.AsyncClient, key: TenantKey, to: list[str]) -> httpx.Response:
    body = {"template": "hi", "to": to, "channels": ["inbox"]}
    return await client.post("/v1/notifications", headers=key.headers, json=body)


async def lease_taken(redis: Redis, tenant_id: uuid.UUID) -> dict[str, int]:
    for _ in range(100):  # the lease is asked for in the background
        found = {k: n for k, n in (await holds(redis, tenant_id)).items() if "lease-" in k}
        if found:
            return found
        await asyncio.sleep(0.02)
    return {}


async def test_far_from_its_quota_intake_hands_out_a_lease_without_asking_redis(
    client: httpx.AsyncClient, session: AsyncSession, redis: Redis
) -> None:
    tenant = await on_lease_plan(session)
    await put_template(client, tenant, "hi", INBOX)
    first = await send(client, tenant, ["a"])
    assert first.status_code == 202, first.text
    # The first request was checked in Redis (its own hold) and a lease was asked for.
    assert f"{first.json()['id']}|inbox" in await holds(redis, tenant.tenant_id)
    leases = await lease_taken(redis, tenant.tenant_id)
    assert list(leases.values()) == [1_000]
    # The next ones come out of the lease: no hold of their own in Redis.
    later = await asyncio.gather(*(send(client, tenant, [f"r{i}"]) for i in range(20)))
    assert all(r.status_code == 202 for r in later)
    held = await holds(redis, tenant.tenant_id)
    assert not any(f"{r.json()['id']}|inbox" in held for r in later)
    # The lease counts as held for every other process's check.
    sums = await redis.hgetall(f"{PREFIX}held:{tenant.tenant_id}")  # type: ignore[misc]
    assert int(sums[b"inbox"]) == 1 + 1_000


async def test_a_lease_taken_under_another_plan_is_not_used(
    client: httpx.AsyncClient, session: AsyncSession, redis: Redis
) -> None:
    """A lease is handed out only under the quota it was taken for: after a plan change the
    next request is checked in Redis against the new quota."""
    tenant = await on_lease_plan(session)
    await put_template(client, tenant, "hi", INBOX)
    assert (await send(client, tenant, ["a"])).status_code == 202
    assert await lease_taken(redis, tenant.tenant_id)
    await session.execute(
        update(Tenant).where(Tenant.id == tenant.tenant_id).values(plan="lease-bigger")
    )
    await session.commit()
    await asyncio.sleep(1.1)  # API keys cache their tenant's plan for up to a second
    after = await send(client, tenant, ["b"])
    assert after.status_code == 202, after.text
    assert f"{after.json()['id']}|inbox" in await holds(redis, tenant.tenant_id)


async def test_near_its_quota_no_lease_is_taken_and_each_request_is_checked(
    client: httpx.AsyncClient, session: AsyncSession, redis: Redis
) -> None:
    tenant = await on_lease_plan(session)
    await put_template(client, tenant, "hi", INBOX)
    meter = Meter(redis)
    # 10,000 left: less than a lease and the 20,000 it must leave.
    await meter.seed(tenant.tenant_id, period_of(utcnow()), {"inbox": QUOTA - 10_000})
    answers = [await send(client, tenant, [f"r{i}"]) for i in range(5)]
    await asyncio.sleep(0.2)  # a lease, had one been asked for, is in by now
    held = await holds(redis, tenant.tenant_id)
    assert not any("lease-" in k for k in held)
    assert all(f"{a.json()['id']}|inbox" in held for a in answers)


async def test_a_lease_is_used_by_every_check_and_lapses_at_its_expiry(
    redis: Redis,
) -> None:
    meter = Meter(redis)
    tenant, period = uuid.uuid4(), period_of(utcnow())
    await meter.seed(tenant, period, {"inbox": 0})
    later = utcnow() + timedelta(hours=1)

    def ask(n: int) -> Reservation:
        return Reservation(tenant, uuid.uuid4(), period, later, [("inbox", n, 25_000)])

    # 25,000 - 1,000 leased leaves 24,000 >= the 20,000 floor: granted.
    soon = int((utcnow() + timedelta(seconds=60)).timestamp() * 1000)
    assert await meter.lease(tenant, period, soon, [("inbox", 1_000, 25_000, 20_000)]) == [1_000]
    # A second would leave 23,000 ≥ 20,000: granted; a third too; the sixth would leave
    # 19,000 < 20,000: refused, nothing held.
    for _ in range(4):
        assert await meter.lease(tenant, period, soon, [("inbox", 1_000, 25_000, 20_000)]) == [
            1_000
        ]
    assert await meter.lease(tenant, period, soon, [("inbox", 1_000, 25_000, 20_000)]) == [0]
    # The exact check counts the 5,000 leased as used.
    assert await meter.reserve([ask(20_001)]) == [Refusal("inbox", 20_000)]
    assert await meter.reserve([ask(20_000)]) == [None]
    # A lease lapses at its expiry and gives its quota back.
    expiries = f"{PREFIX}hold-expiry:{tenant}"
    leases = [m for m in await redis.zrange(expiries, 0, -1) if m.startswith(b"lease-")]  # type: ignore[misc]
    assert len(leases) == 5
    await redis.zadd(expiries, dict.fromkeys(leases, 0))  # type: ignore[misc]
    assert await meter.reserve([ask(5_000)]) == [None]  # room again: the leases lapsed
    sums = await redis.hgetall(f"{PREFIX}held:{tenant}")  # type: ignore[misc]
    assert int(sums[b"inbox"]) == 25_000


async def test_quotas_too_small_to_lease_are_never_leased(
    client: httpx.AsyncClient, session: AsyncSession, redis: Redis
) -> None:
    # The free plan's inbox quota (10,000) would make a lease of 10, under LEASE_MIN.
    assert quota.Leases.size(10_000) < quota.LEASE_MIN
    assert quota.Leases.size(QUOTA) == quota.LEASE_MAX
    tenant = await make_tenant(session, f"small {uuid.uuid4().hex[:6]}", mode="live")
    await put_template(client, tenant, "hi", INBOX)
    answers = [await send(client, tenant, [f"r{i}"]) for i in range(3)]
    await asyncio.sleep(0.2)  # a lease, had one been asked for, is in by now
    held = await holds(redis, tenant.tenant_id)
    assert not any("lease-" in k for k in held)
    assert all(f"{a.json()['id']}|inbox" in held for a in answers)
