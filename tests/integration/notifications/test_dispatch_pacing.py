"""A notification larger than its tenant's send burst: its deliver jobs are queued due as
the tenant's bucket will have tokens for them, so other tenants' work is not queued behind
them; a small one is due at once."""

from __future__ import annotations

import uuid
from datetime import timedelta

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.delivery.sweeper import overdue
from app.notifications.models import Message
from app.runtime import ServiceUrls
from jobs import functions, queues
from tests.send_path import notify, put_template, workers
from tests.support import TenantKey, settings_for

MAIL = {"email": {"subject": "Hi", "text": "Hello"}}


async def test_batches_past_the_burst_are_queued_due_at_the_tenants_rate(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    other_tenant: TenantKey,
    service_urls: ServiceUrls,
    session: AsyncSession,
) -> None:
    # Both on the free plan: 50 messages/s, bursts of 500.
    people = [{"external_id": f"p{n}", "email": f"p{n}@example.com"} for n in range(1_000)]
    for key in (tenant, other_tenant):
        await put_template(client, key, "mail", MAIL)
        made = await client.post(
            "/v1/recipients/batch", headers=key.headers, json={"recipients": people}
        )
        assert made.status_code == 200, made.text
    big = await notify(client, tenant, template="mail", to=[p["external_id"] for p in people])
    small = await notify(client, other_tenant, template="mail", to=["p0"])
    settings = settings_for(service_urls.database_url, service_urls.redis_url)
    async with workers(settings) as ctx:
        ctx["redis"] = pool = await queues.connect(service_urls.redis_url)
        try:
            name = queues.QUEUE_NAMES["normal"]
            before = set(await pool.zrange(name, 0, -1))  # what earlier tests left
            assert await functions.dispatch(ctx, big["id"]) == 10
            assert await functions.dispatch(ctx, small["id"]) == 1
            queued = [
                (job, score)
                for job, score in await pool.zrange(name, 0, -1, withscores=True)
                if job not in before
            ]
        finally:
            await pool.aclose()
    deliveries = sorted(score / 1000 for job, score in queued if job.startswith(b"deliver:"))
    assert len(deliveries) == 11
    # Six batches at once (the burst, and the one its last token covers), then one every 2 s
    # at 50/s; the other tenant's batch, queued after them all, is due at once too.
    at_once, spaced = deliveries[:7], deliveries[7:]
    gaps = [round(s - spaced[0], 2) for s in spaced]
    assert gaps == [0, 2, 4, 6], deliveries
    assert 0.5 < spaced[0] - max(at_once) <= 2.01, deliveries
    # The deferred batches' messages are due when their jobs are: the sweeper, looking for
    # deliveries lost a minute ago, does not take them for lost and send them ahead.
    due = dict(
        (
            await session.execute(
                select(Message.id, Message.next_attempt_at)
                .where(Message.notification_id == uuid.UUID(big["id"]))
                .where(Message.next_attempt_at.is_not(None))
            )
        ).all()
    )
    assert len(due) == 400
    times = sorted({at.timestamp() for at in due.values()})
    # The queue keeps whole milliseconds.
    assert [abs(at - score) < 0.002 for at, score in zip(times, spaced, strict=True)] == [True] * 4
    swept = await overdue(session, older_than=timedelta(seconds=1), limit=10_000)
    await session.rollback()
    assert not {m.id for m in swept} & set(due)
