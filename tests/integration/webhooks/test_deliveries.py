"""Events sent to a tenant's endpoint, against a local receiver: signed (verified with the
reference `standardwebhooks` package), the same `webhook-id` on every attempt, retried on the
schedule and after Retry-After, 3xx a failure never followed, 410 disabling the endpoint,
the last attempt failing for good, private destinations refused at send time, and the
delivery log of each endpoint visible to its tenant and mode only."""

from __future__ import annotations

import dataclasses
import json
import uuid
from datetime import datetime, timedelta

import httpx
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from standardwebhooks.webhooks import Webhook

from app import crypto
from app.db import session_factory, utcnow
from app.settings import Settings
from app.webhooks import delivery
from app.webhooks.models import WebhookDelivery, WebhookEndpoint
from jobs.cron import cron_jobs, send_webhooks
from tests.fakes import FakeProvider
from tests.integration.webhooks.endpoints import endpoint_at
from tests.send_path import workers
from tests.support import TenantKey, assert_problem


async def send(
    engine: AsyncEngine,
    http: httpx.AsyncClient,
    settings: Settings,
    *,
    at: datetime | None = None,
    allow_private: bool = True,
) -> int:
    sent = await delivery.send_due(
        session_factory(engine),
        http,
        crypto.keyring_for(settings),
        allow_private=allow_private,
        clock=(lambda: at) if at is not None else utcnow,
    )
    return sent.tried


async def log_of(client: httpx.AsyncClient, owner: TenantKey, endpoint_id: uuid.UUID) -> list:
    response = await client.get(
        f"/v1/webhook-endpoints/{endpoint_id}/deliveries", headers=owner.headers
    )
    assert response.status_code == 200, response.text
    found: list = response.json()["data"]
    return found


async def test_a_test_event_is_signed_sent_and_logged(
    client: httpx.AsyncClient,
    session: AsyncSession,
    engine: AsyncEngine,
    http: httpx.AsyncClient,
    settings: Settings,
    tenant: TenantKey,
    receiver: FakeProvider,
) -> None:
    receiver.answer(204)
    endpoint_id, secret = await endpoint_at(session, settings, tenant, f"{receiver.url}/hook")
    queued = await client.post(f"/v1/webhook-endpoints/{endpoint_id}/test", headers=tenant.headers)
    assert queued.status_code == 202, queued.text
    assert queued.json()["status"] == "pending" and queued.json()["event_type"] == "webhook.test"

    assert await send(engine, http, settings) == 1
    [(method, path, headers, body)] = receiver.requests
    assert (method, path) == ("POST", "/hook")
    payload = Webhook(secret).verify(body, headers)
    assert payload["type"] == "webhook.test" and payload["id"] == headers["webhook-id"]
    assert payload["data"]["endpoint_id"] == str(endpoint_id)

    [logged] = await log_of(client, tenant, endpoint_id)
    assert logged["status"] == "succeeded" and logged["attempts"] == 1
    assert logged["last_status_code"] == 204 and logged["last_latency_ms"] >= 0
    assert logged["event_id"] == headers["webhook-id"]
    assert await send(engine, http, settings) == 0  # nothing is sent twice


async def test_a_failure_is_retried_on_the_schedule_with_the_same_event_id(
    client: httpx.AsyncClient,
    session: AsyncSession,
    engine: AsyncEngine,
    http: httpx.AsyncClient,
    settings: Settings,
    tenant: TenantKey,
    receiver: FakeProvider,
) -> None:
    endpoint_id, secret = await endpoint_at(session, settings, tenant, f"{receiver.url}/hook")
    await client.post(f"/v1/webhook-endpoints/{endpoint_id}/test", headers=tenant.headers)
    receiver.answer(500)
    before = utcnow()
    assert await send(engine, http, settings) == 1
    [logged] = await log_of(client, tenant, endpoint_id)
    assert logged["status"] == "pending" and logged["attempts"] == 1
    assert logged["last_status_code"] == 500 and logged["last_error"] == "HTTP 500"
    due = datetime.fromisoformat(logged["next_attempt_at"])
    assert before + timedelta(seconds=4) < due < utcnow() + timedelta(seconds=6)  # 5 s
    assert await send(engine, http, settings) == 0  # not due yet

    receiver.answer(200)
    assert await send(engine, http, settings, at=due + timedelta(seconds=1)) == 1
    [logged] = await log_of(client, tenant, endpoint_id)
    assert logged["status"] == "succeeded" and logged["attempts"] == 2
    first, second = receiver.requests
    assert first[2]["webhook-id"] == second[2]["webhook-id"]
    Webhook(secret).verify(second[3], second[2])


async def test_retry_after_is_honoured_and_a_redirect_is_a_failure_not_followed(
    client: httpx.AsyncClient,
    session: AsyncSession,
    engine: AsyncEngine,
    http: httpx.AsyncClient,
    settings: Settings,
    tenant: TenantKey,
    receiver: FakeProvider,
) -> None:
    endpoint_id, _ = await endpoint_at(session, settings, tenant, f"{receiver.url}/hook")
    await client.post(f"/v1/webhook-endpoints/{endpoint_id}/test", headers=tenant.headers)
    receiver.answer(503, headers={"Retry-After": "120"})
    assert await send(engine, http, settings) == 1
    [logged] = await log_of(client, tenant, endpoint_id)
    wait = datetime.fromisoformat(logged["next_attempt_at"]) - utcnow()
    assert timedelta(seconds=110) < wait <= timedelta(seconds=120)

    receiver.answer(302, headers={"Location": f"{receiver.url}/elsewhere"})
    assert await send(engine, http, settings, at=utcnow() + timedelta(seconds=121)) == 1
    [logged] = await log_of(client, tenant, endpoint_id)
    assert logged["status"] == "pending" and logged["last_status_code"] == 302
    assert [path for _, path, _, _ in receiver.requests] == ["/hook", "/hook"]  # not followed


async def test_410_disables_the_endpoint_and_its_deliveries_wait(
    client: httpx.AsyncClient,
    session: AsyncSession,
    engine: AsyncEngine,
    http: httpx.AsyncClient,
    settings: Settings,
    tenant: TenantKey,
    receiver: FakeProvider,
) -> None:
    endpoint_id, _ = await endpoint_at(session, settings, tenant, f"{receiver.url}/hook")
    path = f"/v1/webhook-endpoints/{endpoint_id}"
    await client.post(f"{path}/test", headers=tenant.headers)
    receiver.answer(410)
    assert await send(engine, http, settings) == 1
    [logged] = await log_of(client, tenant, endpoint_id)
    assert logged["status"] == "failed" and logged["next_attempt_at"] is None
    assert (await client.get(path, headers=tenant.headers)).json()["enabled"] is False

    await client.post(f"{path}/test", headers=tenant.headers)
    assert await send(engine, http, settings) == 0  # waits for the endpoint to be enabled
    enabled = await client.put(
        path, headers=tenant.headers, json={"url": f"{receiver.url}/hook", "enabled": True}
    )
    assert enabled.status_code == 422  # a private URL, refused through the API …
    await session.execute(
        update(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id).values(enabled=True)
    )
    await session.commit()
    receiver.answer(200)
    assert await send(engine, http, settings) == 1  # … enabled again, it goes
    assert len(receiver.requests) == 2


async def test_the_last_attempt_fails_for_good(
    client: httpx.AsyncClient,
    session: AsyncSession,
    engine: AsyncEngine,
    http: httpx.AsyncClient,
    settings: Settings,
    tenant: TenantKey,
    receiver: FakeProvider,
) -> None:
    endpoint_id, _ = await endpoint_at(session, settings, tenant, f"{receiver.url}/hook")
    await client.post(f"/v1/webhook-endpoints/{endpoint_id}/test", headers=tenant.headers)
    await session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.endpoint_id == endpoint_id)
        .values(attempts=len(delivery.SCHEDULE) - 1)
    )
    await session.commit()
    receiver.answer(500)
    assert await send(engine, http, settings) == 1
    [logged] = await log_of(client, tenant, endpoint_id)
    assert logged["status"] == "failed" and logged["attempts"] == len(delivery.SCHEDULE)
    assert logged["next_attempt_at"] is None


async def test_a_private_destination_is_refused_when_sending(
    client: httpx.AsyncClient,
    session: AsyncSession,
    engine: AsyncEngine,
    http: httpx.AsyncClient,
    settings: Settings,
    tenant: TenantKey,
    receiver: FakeProvider,
) -> None:
    endpoint_id, _ = await endpoint_at(session, settings, tenant, f"{receiver.url}/hook")
    await client.post(f"/v1/webhook-endpoints/{endpoint_id}/test", headers=tenant.headers)
    assert await send(engine, http, settings, allow_private=False) == 1
    assert receiver.requests == []
    [logged] = await log_of(client, tenant, endpoint_id)
    assert logged["status"] == "pending" and logged["last_status_code"] is None
    assert "not an address Herald will call" in logged["last_error"]
    assert "127.0.0.1" not in json.dumps(logged)


async def test_another_tenant_can_neither_test_nor_read_the_log(
    client: httpx.AsyncClient,
    session: AsyncSession,
    settings: Settings,
    tenant: TenantKey,
    other_tenant: TenantKey,
    receiver: FakeProvider,
) -> None:
    endpoint_id, _ = await endpoint_at(session, settings, tenant, f"{receiver.url}/hook")
    path = f"/v1/webhook-endpoints/{endpoint_id}"
    assert_problem(
        await client.post(f"{path}/test", headers=other_tenant.headers), 404, "not_found"
    )
    denied = await client.get(f"{path}/deliveries", headers=other_tenant.headers)
    assert_problem(denied, 404, "not_found")


async def test_the_workers_cron_sends_what_is_due(
    client: httpx.AsyncClient,
    session: AsyncSession,
    settings: Settings,
    tenant: TenantKey,
    receiver: FakeProvider,
) -> None:
    receiver.answer(200)
    endpoint_id, secret = await endpoint_at(session, settings, tenant, f"{receiver.url}/hook")
    await client.post(f"/v1/webhook-endpoints/{endpoint_id}/test", headers=tenant.headers)
    open_settings = dataclasses.replace(settings, allow_private_urls=True)
    async with workers(open_settings) as ctx:
        assert "cron:send_webhooks" in {job.name for job in cron_jobs()}
        assert await send_webhooks(ctx) == 1
    [(_, _, headers, body)] = receiver.requests
    Webhook(secret).verify(body, headers)


async def test_a_secret_that_cannot_be_decrypted_fails_its_delivery_only(
    client: httpx.AsyncClient,
    session: AsyncSession,
    engine: AsyncEngine,
    http: httpx.AsyncClient,
    settings: Settings,
    tenant: TenantKey,
    other_tenant: TenantKey,
    receiver: FakeProvider,
) -> None:
    """An endpoint whose secret was sealed under a key the keyring no longer holds fails its
    own attempt, with the reason logged; the round goes on, and another endpoint's event
    is sent."""
    receiver.answer(204)
    lost_id, _ = await endpoint_at(session, settings, tenant, f"{receiver.url}/lost")
    kept_id, secret = await endpoint_at(session, settings, other_tenant, f"{receiver.url}/kept")
    await session.execute(
        update(WebhookEndpoint)
        .where(WebhookEndpoint.id == lost_id)
        .values(secret_key_id="retired-key")
    )
    await session.commit()
    for owner, endpoint_id in ((tenant, lost_id), (other_tenant, kept_id)):
        queued = await client.post(
            f"/v1/webhook-endpoints/{endpoint_id}/test", headers=owner.headers
        )
        assert queued.status_code == 202, queued.text

    assert await send(engine, http, settings) == 2
    assert [path for _, path, _, _ in receiver.requests] == ["/kept"]
    Webhook(secret).verify(receiver.requests[0][3], receiver.requests[0][2])
    [lost] = await log_of(client, tenant, lost_id)
    assert lost["status"] == "pending" and lost["attempts"] == 1
    assert lost["last_error"] == "the endpoint's signing secret cannot be decrypted"
    [kept] = await log_of(client, other_tenant, kept_id)
    assert kept["status"] == "succeeded"
