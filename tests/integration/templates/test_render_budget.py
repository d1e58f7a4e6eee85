"""Each tenant's render time per plan: the cost buckets on real Redis, a preview refused with
429 over budget, and a dispatch that writes what it could render and carries on later."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.notifications.models import Message, Notification
from app.notifications.relay import stale_accepted
from app.ratelimit.buckets import Bucket, CostBuckets, render_bucket
from app.runtime import ServiceUrls
from app.tenants.plans import limits_for
from jobs import functions, queues
from tests.send_path import notify, put_recipient, put_template, workers
from tests.support import TenantKey, assert_problem, settings_for

# Runs into the 100 ms render limit for every recipient: each render costs about 100 ms.
RUNAWAY = (
    "{{ recipient.id }}{% for i in range(10 ** 5) %}{% for j in range(10 ** 5) %}"
    "{% endfor %}{% endfor %}"
)


@pytest.fixture
async def redis(service_urls: ServiceUrls) -> AsyncIterator[Redis]:
    client = Redis.from_url(service_urls.redis_url)
    yield client
    await client.aclose()


def tenant_budget(tenant: TenantKey) -> Bucket:
    return render_bucket(tenant.tenant_id, tenant.mode, limits_for("free"))


async def set_level(redis: Redis, bucket: Bucket, level: float) -> None:
    """What the tenant's renders would have left in the bucket (on Redis's clock)."""
    seconds, micros = await redis.time()
    now = seconds * 1_000_000 + micros
    await redis.hset(bucket.redis_key, mapping={"t": repr(level), "ts": str(now)})


async def test_reserve_then_settle_with_what_the_work_cost(redis: Redis) -> None:
    buckets = CostBuckets(redis)
    bucket = Bucket(f"{uuid.uuid4()}:render", rate=100, burst=1000)
    first = await buckets.reserve(bucket, 300, least=300)
    assert (first.granted, first.wait) == (300, 0)
    await buckets.settle(bucket, first.granted, 40)  # 260 of it given back
    most = await buckets.reserve(bucket, 5000, least=1)
    assert 955 <= most.granted <= 965  # about 960 left, plus what refilled meanwhile
    await buckets.settle(bucket, most.granted, most.granted + 500)  # 500 more than reserved
    refused = await buckets.reserve(bucket, 200, least=200)
    assert refused.granted == 0
    assert 6.5 < refused.wait <= 7.0  # from about -500 to 200 at 100 per second
    level = float((await redis.hget(bucket.redis_key, "t")) or 0)
    assert -501 < level < -490, "a refused reservation takes nothing"


async def test_debt_is_at_most_one_burst(redis: Redis) -> None:
    buckets = CostBuckets(redis)
    bucket = Bucket(f"{uuid.uuid4()}:render", rate=10, burst=100)
    await buckets.settle(bucket, 0, 10_000)
    refused = await buckets.reserve(bucket, 1, least=1)
    assert 10.0 < refused.wait <= 10.2  # -100 to 1 at 10 per second


async def test_a_preview_over_the_render_budget_is_refused_with_retry_after(
    client: httpx.AsyncClient, tenant: TenantKey, redis: Redis
) -> None:
    await put_template(
        client, tenant, "budget", {"sms": {"text": "Hi"}, "inbox": {"title": "T", "body": "B"}}
    )
    bucket = tenant_budget(tenant)
    # Two channels reserve 2 x 200 ms at their worst; 300 ms left is not enough.
    await set_level(redis, bucket, 300)
    refused = await client.post("/v1/templates/budget/preview", headers=tenant.headers, json={})
    assert_problem(refused, 429, "rate_limited")
    assert 1 <= int(refused.headers["retry-after"]) <= 1  # (400 - 300) / 200 per second
    assert refused.json()["retry_after"] == int(refused.headers["retry-after"])
    assert "render" in refused.json()["detail"]
    await set_level(redis, bucket, 400)
    began = time.monotonic()
    preview = await client.post("/v1/templates/budget/preview", headers=tenant.headers, json={})
    took = time.monotonic() - began
    assert preview.status_code == 200, preview.text
    assert preview.json()["channels"]["sms"]["content"]["text"] == "Hi"
    # Charged what the renders took (well under a millisecond each), not the 400 ms set aside
    # for them; the bucket refilled at 200 ms per second meanwhile.
    level = float((await redis.hget(bucket.redis_key, "t")) or 0)
    assert 390 < level <= 400 + 200 * took


async def test_a_send_out_of_render_budget_goes_on_later_without_duplicates(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    redis: Redis,
    session: AsyncSession,
    service_urls: ServiceUrls,
) -> None:
    await put_template(client, tenant, "runaway", {"inbox": {"title": "T", "body": RUNAWAY}})
    people = [f"b{n}" for n in range(5)]
    for external_id in people:
        await put_recipient(client, tenant, external_id)
    accepted = await notify(client, tenant, template="runaway", to=people)
    key = uuid.UUID(accepted["id"])
    bucket = tenant_budget(tenant)
    settings = settings_for(service_urls.database_url, service_urls.redis_url)
    async with workers(settings) as ctx:
        ctx["redis"] = pool = await queues.connect(service_urls.redis_url)
        try:
            # Room for about two of the five 100 ms renders: the rest waits for the refill.
            await set_level(redis, bucket, 250)
            await functions.dispatch(ctx, accepted["id"])
            first = await _state(session, key)
            assert first["status"] == "accepted"
            assert 2 <= len(first["messages"]) <= 3
            assert first["after"] is not None and first["after"] > datetime.now(UTC)
            later = await pool.zrangebyscore(queues.QUEUE_NAMES["normal"], "-inf", "+inf")
            assert f"dispatch:{key}:{int(first['after'].timestamp() * 1000)}".encode() in later
            # The relay leaves it to that job until it is due.
            assert key not in {
                p.id for p in await stale_accepted(session, older_than=timedelta(0), limit=100)
            }

            # The budget refills (here: at once); the deferred run writes only the rest.
            await set_level(redis, bucket, 5000)
            await functions.dispatch(ctx, accepted["id"])
            done = await _state(session, key)
        finally:
            await pool.aclose()
    assert done["status"] == "dispatched" and done["after"] is None
    assert sorted(done["messages"]) == sorted({m for m in done["messages"]})
    assert len(done["messages"]) == 5
    assert set(first["messages"]) <= set(done["messages"])
    errors = {error for _, error in done["messages"].values()}
    assert errors == {"inbox.body: rendering took longer than the 100 ms limit"}


async def _state(session: AsyncSession, key: uuid.UUID) -> dict[str, Any]:
    session.expire_all()
    notification = await session.get(Notification, key)
    assert notification is not None
    rows = await session.execute(
        select(Message.id, Message.recipient_id, Message.status, Message.last_error).where(
            Message.notification_id == key
        )
    )
    messages = {row.recipient_id: (row.status, row.last_error) for row in rows}
    return {
        "status": notification.status,
        "after": notification.dispatch_after,
        "messages": messages,
    }


async def test_a_save_is_compiled_on_the_render_budget_and_refused_when_it_is_spent(
    client: httpx.AsyncClient, tenant: TenantKey, redis: Redis
) -> None:
    bucket = tenant_budget(tenant)
    body = {"content": {"sms": {"text": "Hi"}}, "locales": {"fr": {"sms": {"text": "Salut"}}}}
    await set_level(redis, bucket, -300)  # in debt: renders and compiles took it all
    refused = await client.put("/v1/templates/saved", headers=tenant.headers, json=body)
    assert_problem(refused, 429, "rate_limited")
    assert int(refused.headers["retry-after"]) == 2  # (1 + 300) / 200 per second, up
    missing = await client.get("/v1/templates/saved", headers=tenant.headers)
    assert missing.status_code == 404  # nothing was saved
    await set_level(redis, bucket, 2000)
    began = time.monotonic()
    saved = await client.put("/v1/templates/saved", headers=tenant.headers, json=body)
    took = time.monotonic() - began
    assert saved.status_code == 201, saved.text
    # Charged what compiling took in the render processes (milliseconds), not the second
    # per set of sources a compile may take at worst.
    level = float((await redis.hget(bucket.redis_key, "t")) or 0)
    assert 1900 < level < 2000 + 200 * took
