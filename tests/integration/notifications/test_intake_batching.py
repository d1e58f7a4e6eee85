"""Group commit at intake: concurrent requests share statements but keep their own answers."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
from prometheus_client import REGISTRY
from redis.asyncio import Redis
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.notifications.models import Notification
from app.recipients.models import Recipient
from app.runtime import ServiceUrls
from jobs import queues
from tests.send_path import put_recipient, put_template
from tests.support import TenantKey, assert_problem

CONTENT = {"email": {"subject": "Hi", "text": "Hello"}, "inbox": {"title": "Hi", "body": "Hello"}}


def batches_observed() -> tuple[float, float]:
    """(batches written, notifications in them) so far in this process."""
    count = REGISTRY.get_sample_value("herald_intake_batch_size_count") or 0.0
    total = REGISTRY.get_sample_value("herald_intake_batch_size_sum") or 0.0
    return count, total


async def post(
    client: httpx.AsyncClient, key: TenantKey, body: dict[str, Any], idempotency_key: str = ""
) -> httpx.Response:
    headers = dict(key.headers)
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    return await client.post("/v1/notifications", json=body, headers=headers)


async def test_concurrent_requests_share_batches_and_keep_their_answers(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    other_tenant: TenantKey,
    session: AsyncSession,
    service_urls: ServiceUrls,
) -> None:
    for key in (tenant, other_tenant):
        await put_template(client, key, "hello", CONTENT)
        await put_recipient(client, key, "ann", email="ann@example.com")
    await client.put("/v1/categories/billing", headers=tenant.headers, json={"name": "Billing"})
    good = {"template": "hello", "to": ["ann"]}
    cases: list[tuple[TenantKey, dict[str, Any], int, str | None]] = [
        (tenant, good, 202, None),
        (other_tenant, {**good, "channels": ["inbox"]}, 202, None),
        (tenant, {**good, "category": "billing"}, 202, None),
        # billing exists in the first tenant only
        (other_tenant, {**good, "category": "billing"}, 422, "category"),
        (tenant, {**good, "template": "nope"}, 422, "template"),
        (tenant, {**good, "channels": ["sms"]}, 422, "channels[0]"),
    ] * 20
    before = batches_observed()
    answers = await asyncio.gather(*(post(client, key, body) for key, body, _, _ in cases))
    after = batches_observed()
    accepted_ids: dict[uuid.UUID, list[str]] = {tenant.tenant_id: [], other_tenant.tenant_id: []}
    for (key, _, status, field), answer in zip(cases, answers, strict=True):
        if status == 202:
            assert answer.status_code == 202, answer.text
            accepted_ids[key.tenant_id].append(answer.json()["id"])
        else:
            assert_problem(answer, 422, "validation_error")
            assert [e["field"] for e in answer.json()["errors"]] == [field]
    # Fewer writes than requests: they were grouped. Every request went through the writer.
    assert after[1] - before[1] == len(cases)
    assert after[0] - before[0] < len(cases)
    for tenant_id, ids in accepted_ids.items():
        stored = set(
            await session.scalars(
                select(Notification.id).where(Notification.tenant_id == tenant_id)
            )
        )
        assert {uuid.UUID(i) for i in ids} == stored
    # Each accepted notification has its dispatch job queued (one Redis call per batch).
    redis = Redis.from_url(service_urls.redis_url)
    try:
        queued = set(await redis.zrange(queues.QUEUE_NAMES["normal"], 0, -1))
    finally:
        await redis.aclose()
    for ids in accepted_ids.values():
        assert {f"dispatch:{i}".encode() for i in ids} <= queued


async def test_idempotency_inside_one_batch(
    client: httpx.AsyncClient, tenant: TenantKey, session: AsyncSession
) -> None:
    await put_template(client, tenant, "hello", CONTENT)
    body = {"template": "hello", "to": ["ann"]}
    other = {"template": "hello", "to": ["bob"]}
    first = await post(client, tenant, body, "same-key")
    assert first.status_code == 202
    # The same key again, ten times with the same body and once with another, all at once.
    answers = await asyncio.gather(
        *(post(client, tenant, body, "same-key") for _ in range(10)),
        post(client, tenant, other, "same-key"),
    )
    for answer in answers[:10]:
        assert answer.status_code == 202
        assert answer.json()["id"] == first.json()["id"]
        assert answer.headers["Idempotent-Replayed"] == "true"
    assert_problem(answers[10], 422, "idempotency_key_reused")
    rows = await session.scalar(
        select(func.count())
        .select_from(Notification)
        .where(Notification.tenant_id == tenant.tenant_id)
    )
    assert rows == 1


async def test_inline_recipients_share_the_batch_and_are_upserted_with_it(
    client: httpx.AsyncClient, tenant: TenantKey, session: AsyncSession
) -> None:
    """Requests with recipients given inline go through the same group commit as plain
    ones; each upserts its recipients in the batch's transaction, a later request's fields
    winning, and a refused recipient refuses its own request only."""
    await put_template(client, tenant, "hello", CONTENT)
    await put_recipient(client, tenant, "ann", email="ann@example.com")
    plain = {"template": "hello", "to": ["ann"]}
    cases: list[tuple[dict[str, Any], int]] = []
    for i in range(10):
        inline = {"external_id": f"zed-{i}", "email": f"zed-{i}@example.com", "locale": "fr"}
        cases += [
            (plain, 202),
            ({"template": "hello", "to": ["ann", inline]}, 202),
            ({"template": "hello", "to": [{"external_id": f"bad-{i}", "email": "nope"}]}, 422),
        ]
    # The same recipient in two requests: the second one's locale is the one kept.
    cases.append(({"template": "hello", "to": [{"external_id": "zed-0", "locale": "de"}]}, 202))
    before = batches_observed()
    answers = await asyncio.gather(*(post(client, tenant, body) for body, _ in cases))
    after = batches_observed()
    for (_, status), answer in zip(cases, answers, strict=True):
        assert answer.status_code == status, answer.text
        if status == 422:
            assert [e["field"] for e in answer.json()["errors"]] == ["to[0].email"]
    assert after[1] - before[1] == len(cases)
    assert after[0] - before[0] < len(cases)
    stored = dict(
        (
            await session.execute(
                select(Recipient.external_id, Recipient.locale).where(
                    Recipient.tenant_id == tenant.tenant_id, Recipient.mode == tenant.mode
                )
            )
        ).all()
    )
    assert stored == {
        "ann": None,
        "zed-0": "de",
        **{f"zed-{i}": "fr" for i in range(1, 10)},
    }
    rows = await session.scalar(
        select(func.count())
        .select_from(Notification)
        .where(Notification.tenant_id == tenant.tenant_id)
    )
    assert rows == 21
