"""The dead-letter queue: failed messages listed and grouped, replayed through real workers
(once, however many callers race), discarded, isolated per tenant, bad input refused."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.models import AuditEntry
from app.delivery import outbox
from app.notifications.dispatch import dispatch
from app.notifications.models import Attempt, Message
from app.runtime import ServiceUrls
from jobs import queues
from tests.queue_traffic import queue_traffic
from tests.send_path import drain, notification, notify, put_recipient, put_template, workers
from tests.support import (
    TenantKey,
    assert_problem,
    make_tenant,
    settings_for,
    unmetered_renderer,
)

EMAIL = {"email": {"subject": "Hello {{ name }}", "text": "Hi {{ name }}"}}


@pytest.fixture
async def sandbox(session: AsyncSession) -> TenantKey:
    return await make_tenant(session, "Sandboxed", mode="test")


async def run_workers(service_urls: ServiceUrls) -> None:
    async with workers(settings_for(service_urls.database_url, service_urls.redis_url)) as ctx:
        await drain(ctx, service_urls.redis_url)


async def failed_message(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    service_urls: ServiceUrls,
    *,
    recipient: str = "bad",
    data: dict[str, Any] | None = None,
) -> tuple[str, str]:
    """Send to an address the sandbox always refuses; return (notification id, message id)."""
    await put_template(client, tenant, "hello", EMAIL)
    await put_recipient(client, tenant, recipient, email="fail@sandbox.herald")
    accepted = await notify(
        client,
        tenant,
        template="hello",
        to=[recipient],
        data={"name": "x"} if data is None else data,
    )
    await run_workers(service_urls)
    [message] = (await notification(client, tenant, accepted["id"]))["messages"]
    assert message["status"] == "failed", message
    return accepted["id"], message["id"]


async def message_row(session: AsyncSession, message_id: str) -> Message:
    session.expire_all()
    message = await session.get(Message, uuid.UUID(message_id), populate_existing=True)
    assert message is not None
    return message


async def attempt_rows(session: AsyncSession, message_id: str) -> int:
    return int(
        await session.scalar(
            select(func.count())
            .select_from(Attempt)
            .where(Attempt.message_id == uuid.UUID(message_id))
        )
        or 0
    )


async def dlq(client: httpx.AsyncClient, tenant: TenantKey, **params: Any) -> dict[str, Any]:
    response = await client.get("/v1/dlq", headers=tenant.headers, params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def replay(client: httpx.AsyncClient, tenant: TenantKey, **body: Any) -> httpx.Response:
    return await client.post("/v1/dlq/replay", headers=tenant.headers, json=body)


async def test_failures_are_listed_with_groups(
    client: httpx.AsyncClient, sandbox: TenantKey, service_urls: ServiceUrls
) -> None:
    _, message_id = await failed_message(client, sandbox, service_urls)
    # A render failure fails at dispatch: no provider, no attempt.
    _, render_failed = await failed_message(client, sandbox, service_urls, recipient="r2", data={})

    body = await dlq(client, sandbox)
    assert [m["id"] for m in body["data"]] == [render_failed, message_id]  # newest first
    assert body["data"][1]["error_class"] == "permanent"
    assert body["data"][1]["provider"] == "sandbox"
    assert sorted(body["groups"], key=lambda g: g["error_class"]) == [
        {"error_class": "permanent", "provider": "sandbox", "status_code": 400, "count": 1},
        {"error_class": "render", "provider": None, "status_code": None, "count": 1},
    ]

    only = await dlq(client, sandbox, error_class="permanent", provider="sandbox", channel="email")
    assert [m["id"] for m in only["data"]] == [message_id]
    assert [g["count"] for g in only["groups"]] == [1]
    assert (await dlq(client, sandbox, error_class="transient"))["data"] == []

    first = await dlq(client, sandbox, limit=1)
    assert first["has_more"] is True
    second = await dlq(client, sandbox, limit=1, cursor=first["next_cursor"])
    assert [m["id"] for m in second["data"]] == [message_id]
    assert second["has_more"] is False
    assert len(second["groups"]) == 2  # groups count every match, not the page


async def test_replay_by_id_delivers_again(
    client: httpx.AsyncClient,
    sandbox: TenantKey,
    service_urls: ServiceUrls,
    session: AsyncSession,
) -> None:
    _, message_id = await failed_message(client, sandbox, service_urls)
    assert await attempt_rows(session, message_id) == 1

    dry = await replay(client, sandbox, ids=[message_id], dry_run=True)
    assert dry.status_code == 200, dry.text
    assert dry.json() == {"count": 1, "not_replayable": 0}
    assert (await message_row(session, message_id)).status == "failed"

    response = await replay(client, sandbox, ids=[message_id])
    assert response.status_code == 200, response.text
    assert response.json() == {"replayed": 1, "not_replayable": 0}
    queued = await message_row(session, message_id)
    assert (queued.status, queued.attempts, queued.error_class) == ("queued", 0, None)
    assert (await dlq(client, sandbox))["data"] == []

    await run_workers(service_urls)
    again = await message_row(session, message_id)
    assert (again.status, again.attempts, again.error_class) == ("failed", 1, "permanent")
    assert await attempt_rows(session, message_id) == 2

    audit = (
        await session.scalars(
            select(AuditEntry).where(
                AuditEntry.tenant_id == sandbox.tenant_id, AuditEntry.action == "dlq.replayed"
            )
        )
    ).all()
    assert [(e.details["count"], e.details["ids"]) for e in audit] == [(1, [message_id])]


async def test_render_failures_are_not_replayable(
    client: httpx.AsyncClient,
    sandbox: TenantKey,
    service_urls: ServiceUrls,
    session: AsyncSession,
) -> None:
    _, message_id = await failed_message(client, sandbox, service_urls, data={})
    assert (await message_row(session, message_id)).error_class == "render"
    dry = await replay(client, sandbox, ids=[message_id], dry_run=True)
    assert dry.json() == {"count": 0, "not_replayable": 1}
    response = await replay(client, sandbox, filter={})
    assert response.json() == {"replayed": 0, "not_replayable": 1}
    assert (await message_row(session, message_id)).status == "failed"


async def test_replay_by_filter(
    client: httpx.AsyncClient,
    sandbox: TenantKey,
    service_urls: ServiceUrls,
    session: AsyncSession,
) -> None:
    chosen, chosen_id = await failed_message(client, sandbox, service_urls)
    _, other_id = await failed_message(client, sandbox, service_urls, recipient="bad2")

    flt = {"notification": chosen, "error_class": "permanent"}
    dry = await replay(client, sandbox, filter=flt, dry_run=True)
    assert dry.json() == {"count": 1, "not_replayable": 0}
    assert (await replay(client, sandbox, filter=flt)).json() == {
        "replayed": 1,
        "not_replayable": 0,
    }
    assert (await message_row(session, chosen_id)).status == "queued"
    assert (await message_row(session, other_id)).status == "failed"
    await run_workers(service_urls)
    assert await attempt_rows(session, chosen_id) == 2
    assert await attempt_rows(session, other_id) == 1


async def test_discard(
    client: httpx.AsyncClient,
    sandbox: TenantKey,
    service_urls: ServiceUrls,
    session: AsyncSession,
) -> None:
    _, message_id = await failed_message(client, sandbox, service_urls)
    dry = await client.post(
        "/v1/dlq/discard", headers=sandbox.headers, json={"ids": [message_id], "dry_run": True}
    )
    assert dry.json() == {"count": 1, "not_replayable": 0}
    assert (await message_row(session, message_id)).status == "failed"

    response = await client.post(
        "/v1/dlq/discard", headers=sandbox.headers, json={"filter": {"channel": "email"}}
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"discarded": 1}
    row = await message_row(session, message_id)
    assert (row.status, row.skip_reason) == ("cancelled", "discarded")
    assert (await dlq(client, sandbox))["data"] == []
    assert (await replay(client, sandbox, ids=[message_id])).json()["replayed"] == 0


async def test_concurrent_replays_move_the_message_once(
    client: httpx.AsyncClient,
    sandbox: TenantKey,
    service_urls: ServiceUrls,
    session: AsyncSession,
) -> None:
    _, message_id = await failed_message(client, sandbox, service_urls)
    responses = await asyncio.gather(
        *(replay(client, sandbox, ids=[message_id]) for _ in range(50))
    )
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    assert sorted(r.json()["replayed"] for r in responses) == [0] * 49 + [1]
    await run_workers(service_urls)
    assert await attempt_rows(session, message_id) == 2
    assert (await message_row(session, message_id)).attempts == 1


async def test_tenant_isolation(
    client: httpx.AsyncClient,
    sandbox: TenantKey,
    other_tenant: TenantKey,
    service_urls: ServiceUrls,
    session: AsyncSession,
) -> None:
    _, message_id = await failed_message(client, sandbox, service_urls)
    assert (await dlq(client, other_tenant))["data"] == []
    assert (await dlq(client, other_tenant))["groups"] == []
    assert (await replay(client, other_tenant, ids=[message_id], dry_run=True)).json()["count"] == 0
    assert (await replay(client, other_tenant, ids=[message_id])).json()["replayed"] == 0
    assert (await replay(client, other_tenant, filter={})).json()["replayed"] == 0
    discard = await client.post(
        "/v1/dlq/discard", headers=other_tenant.headers, json={"ids": [message_id]}
    )
    assert discard.json() == {"discarded": 0}
    row = await message_row(session, message_id)
    assert (row.status, row.attempts) == ("failed", 1)
    assert await attempt_rows(session, message_id) == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"ids": [str(uuid.uuid4())], "filter": {}}, "filter"),
        ({"ids": [str(uuid.uuid4()) for _ in range(1001)]}, "ids"),
        ({"filter": {"error_class": "gremlins"}}, "filter.error_class"),
        ({"dry_run": True}, "ids"),
    ],
)
async def test_bad_input(
    client: httpx.AsyncClient, sandbox: TenantKey, body: dict[str, Any], field: str
) -> None:
    for path in ("/v1/dlq/replay", "/v1/dlq/discard"):
        response = await client.post(path, headers=sandbox.headers, json=body)
        problem = assert_problem(response, 422, "validation_error")
        assert [e["field"] for e in problem["errors"]] == [field]  # type: ignore[attr-defined]
    response = await client.get("/v1/dlq", headers=sandbox.headers, params={"error_class": "x"})
    problem = assert_problem(response, 422, "validation_error")
    assert "error_class" in str(problem["errors"])


async def test_scopes(client: httpx.AsyncClient, session: AsyncSession) -> None:
    reader = await make_tenant(session, "Reader", mode="test", scopes=["read"])
    assert (await client.get("/v1/dlq", headers=reader.headers)).status_code == 200
    for path in ("/v1/dlq/replay", "/v1/dlq/discard"):
        response = await client.post(path, headers=reader.headers, json={"filter": {}})
        assert_problem(response, 403, "insufficient_scope")


async def test_a_large_replay_goes_in_pages_of_one_transaction_and_one_round_trip(
    client: httpx.AsyncClient,
    sandbox: TenantKey,
    service_urls: ServiceUrls,
    session: AsyncSession,
) -> None:
    """250 failed messages replayed by filter: three pages (100, 100, 50), each committed
    with its audit entry and enqueued in one call, never the whole list at once."""
    await put_template(client, sandbox, "hello", EMAIL)
    many = [
        {"external_id": f"dead-{i}", "email": "fail@sandbox.herald"}
        for i in range(2 * outbox.BATCH_SIZE + 50)
    ]
    accepted = await notify(client, sandbox, template="hello", to=many, data={"name": "x"})
    notification_id = uuid.UUID(accepted["id"])
    await dispatch(session, notification_id=notification_id, renderer=unmetered_renderer())
    await session.execute(
        update(Message)
        .where(Message.notification_id == notification_id)
        .values(status="failed", error_class="permanent", last_error="refused")
    )
    await session.commit()
    redis = Redis.from_url(service_urls.redis_url)
    await redis.delete(*queues.QUEUE_NAMES.values())  # the API's dispatch job: not under test

    selection = {"filter": {"notification": accepted["id"]}}
    async with queue_traffic(service_urls.redis_url) as traffic:
        answer = await replay(client, sandbox, **selection)
    assert answer.json() == {"replayed": 250, "not_replayable": 0}
    assert traffic.round_trips == 3  # one enqueue per page
    jobs = [
        j.decode() for name in queues.QUEUE_NAMES.values() for j in await redis.zrange(name, 0, -1)
    ]
    await redis.aclose()
    # replay:<first id>:<ids>:<call>.<page>
    assert sorted(int(job.split(":")[2]) for job in jobs if job.startswith("replay:")) == [
        50,
        100,
        100,
    ]
    statuses = await session.execute(
        select(Message.status, func.count())
        .where(Message.notification_id == notification_id)
        .group_by(Message.status)
    )
    assert dict(statuses.all()) == {"queued": 250}
    audit = await session.scalars(
        select(AuditEntry)
        .where(AuditEntry.tenant_id == sandbox.tenant_id, AuditEntry.action == "dlq.replayed")
        .order_by(AuditEntry.seq)
    )
    assert [entry.details["count"] for entry in audit] == [100, 100, 50]
    # Nothing left to replay.
    assert (await replay(client, sandbox, **selection)).json() == {
        "replayed": 0,
        "not_replayable": 0,
    }
