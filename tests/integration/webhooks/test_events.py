"""Tenants' events from the changes they describe to their endpoints: written in the change's
transaction (only when an endpoint wants them), fanned out per endpoint, sent in order per
message, notification.completed once nothing is left to send, an endpoint failing for five
days disabled with its owners told, and a delivery sent again by hand with the same id.

Sends go through real arq workers to the sandbox provider (test keys); the endpoints are a
local receiver, and signatures are checked with the reference `standardwebhooks` package.
"""

from __future__ import annotations

import dataclasses
import uuid
from datetime import timedelta
from email import message_from_bytes
from email.policy import default
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from standardwebhooks.webhooks import Webhook

from app import crypto
from app.auth.mailer import SystemMailer
from app.auth.models import Membership, User
from app.db import session_factory, utcnow
from app.notifications.models import Notification
from app.runtime import ServiceUrls
from app.settings import Settings
from app.webhooks import delivery, events, fanout, service
from app.webhooks.models import WebhookDelivery, WebhookEndpoint, WebhookEvent
from tests.fakes import FakeProvider, Mailbox
from tests.integration.webhooks.endpoints import endpoint_at
from tests.send_path import drain, notify, put_recipient, put_template, workers
from tests.support import TenantKey, key_of


@pytest.fixture
async def test_key(session: AsyncSession, tenant: TenantKey) -> TenantKey:
    return await key_of(session, tenant, "test")


def sender(engine: AsyncEngine, http: httpx.AsyncClient, settings: Settings) -> delivery.Sender:
    return delivery.Sender(
        sessions=session_factory(engine),
        client=http,
        keyring=crypto.keyring_for(settings),
        allow_private=True,
    )


def received(receiver: FakeProvider, secret: str) -> list[dict[str, Any]]:
    """The verified events the receiver got, in arrival order."""
    return [Webhook(secret).verify(body, headers) for _, _, headers, body in receiver.requests]


async def send_one(
    client: httpx.AsyncClient, settings: Settings, key: TenantKey, email: str
) -> dict[str, Any]:
    await put_template(
        client, key, "hello", {"email": {"subject": "Hi", "text": "Hello"}}, category="marketing"
    )
    await put_recipient(client, key, "ada", email=email)
    accepted = await notify(client, key, template="hello", to=["ada"])
    # The workers' cron sends events too: to the local receiver, which needs private URLs.
    async with workers(dataclasses.replace(settings, allow_private_urls=True)) as ctx:
        await drain(ctx, settings.redis_url or "")
    return accepted


async def test_a_sent_message_and_its_completed_notification_reach_the_endpoint(
    client: httpx.AsyncClient,
    session: AsyncSession,
    engine: AsyncEngine,
    http: httpx.AsyncClient,
    settings: Settings,
    test_key: TenantKey,
    receiver: FakeProvider,
) -> None:
    receiver.answer(204)
    _, secret = await endpoint_at(session, settings, test_key, f"{receiver.url}/hook")
    accepted = await send_one(client, settings, test_key, "ada@example.com")

    # The workers' own cron may have sent some already: what matters is what arrived.
    await sender(engine, http, settings).run()
    # Order holds per subject (message, notification), not between them.
    got = sorted(received(receiver, secret), key=lambda e: str(e["type"]))
    assert [e["type"] for e in got] == ["message.sent", "notification.completed"]
    sent, completed = got
    assert sent["data"]["recipient"] == "ada" and sent["data"]["status"] == "sent"
    assert sent["data"]["notification_id"] == accepted["id"]
    assert sent["data"]["provider"] == "sandbox" and sent["data"]["channel"] == "email"
    assert completed["data"] == {"notification_id": accepted["id"], "messages": {"sent": 1}}
    # Each event once: the outbox is empty, and a second tick finds nothing more.
    assert await session.scalar(select(func.count()).select_from(WebhookEvent)) == 0
    tick = await sender(engine, http, settings).run()
    assert (tick.completed, tick.fanned_out, tick.tried) == (0, 0, 0)
    assert len(receiver.requests) == 2


async def test_a_bounce_is_a_failed_message_and_a_suppressed_recipient(
    client: httpx.AsyncClient,
    session: AsyncSession,
    engine: AsyncEngine,
    http: httpx.AsyncClient,
    settings: Settings,
    test_key: TenantKey,
    receiver: FakeProvider,
) -> None:
    receiver.answer(204)
    types = ["message.failed", "recipient.suppressed"]
    _, secret = await endpoint_at(session, settings, test_key, f"{receiver.url}/hook", types)
    await send_one(client, settings, test_key, "bounce@example.com")

    await sender(engine, http, settings).run()
    # Order holds per subject (the message, the recipient), not between them.
    failed, suppressed = sorted(received(receiver, secret), key=lambda e: str(e["type"]))
    assert failed["type"] == "message.failed"
    assert failed["data"]["error_class"] == "permanent" and failed["data"]["recipient"] == "ada"
    assert suppressed["type"] == "recipient.suppressed"
    assert suppressed["data"] == {
        "recipient": "ada",
        "channel": "email",
        "address": "bounce@example.com",
        "reason": "hard_bounce",
        "message_id": failed["data"]["message_id"],
    }


async def test_nothing_is_written_for_a_tenant_without_an_endpoint_that_wants_it(
    client: httpx.AsyncClient,
    session: AsyncSession,
    engine: AsyncEngine,
    settings: Settings,
    test_key: TenantKey,
    receiver: FakeProvider,
) -> None:
    # An endpoint of the other mode, one for other types, and a disabled one for every type.
    live = TenantKey(test_key.tenant_id, test_key.key_id, "hk_live_x")
    await endpoint_at(session, settings, live, f"{receiver.url}/live")
    await endpoint_at(session, settings, test_key, f"{receiver.url}/b", ["message.bounced"])
    disabled, _ = await endpoint_at(session, settings, test_key, f"{receiver.url}/off")
    await session.execute(
        update(WebhookEndpoint).where(WebhookEndpoint.id == disabled).values(enabled=False)
    )
    await session.commit()

    await send_one(client, settings, test_key, "ada@example.com")
    assert await session.scalar(select(func.count()).select_from(WebhookEvent)) == 0


async def record_events(session: AsyncSession, owner: TenantKey, keys: list[str]) -> None:
    """One event per key, written in the given order."""
    for n, key in enumerate(keys):
        await events.record(
            session,
            [events.Event(owner.tenant_id, owner.mode, "message.delivered", key, {"n": n})],
            utcnow(),
        )
        await session.commit()


async def test_the_events_of_one_message_go_out_in_order_others_do_not_wait(
    session: AsyncSession,
    engine: AsyncEngine,
    http: httpx.AsyncClient,
    settings: Settings,
    tenant: TenantKey,
    receiver: FakeProvider,
) -> None:
    endpoint_id, secret = await endpoint_at(session, settings, tenant, f"{receiver.url}/hook")
    await record_events(session, tenant, ["m1", "m1", "m2", "m1"])
    async with session_factory(engine)() as fresh:
        assert await fanout.fan_out(fresh, utcnow()) == 4

    sessions, ring = session_factory(engine), crypto.keyring_for(settings)
    receiver.answer(500)
    now = utcnow()
    # The first of m1 and the only one of m2 are due; m1's later events wait behind the first.
    first = await delivery.send_due(sessions, http, ring, allow_private=True, clock=lambda: now)
    assert first.tried == 2
    assert sorted(e["data"]["n"] for e in received(receiver, secret)) == [0, 2]
    # Its retry is 5 s away: nothing of m1 goes before it, however often the sender looks.
    receiver.requests.clear()
    again = await delivery.send_due(sessions, http, ring, allow_private=True, clock=lambda: now)
    assert again.tried == 0

    receiver.answer(204)
    later = now + timedelta(seconds=6)
    for _ in range(4):
        await delivery.send_due(sessions, http, ring, allow_private=True, clock=lambda: later)
    got = [e["data"]["n"] for e in received(receiver, secret)]
    assert sorted(got[:2]) == [0, 2] and got[2:] == [1, 3]
    statuses = await session.scalars(
        select(WebhookDelivery.status).where(WebhookDelivery.endpoint_id == endpoint_id)
    )
    assert set(statuses) == {"succeeded"}


async def test_a_finally_failed_event_no_longer_holds_back_the_next(
    session: AsyncSession,
    engine: AsyncEngine,
    http: httpx.AsyncClient,
    settings: Settings,
    tenant: TenantKey,
    receiver: FakeProvider,
) -> None:
    _, secret = await endpoint_at(session, settings, tenant, f"{receiver.url}/hook")
    await record_events(session, tenant, ["m1", "m1"])
    async with session_factory(engine)() as fresh:
        await fanout.fan_out(fresh, utcnow())
    await session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.payload["data"]["n"].as_integer() == 0)
        .values(attempts=len(delivery.SCHEDULE) - 1)
    )
    await session.commit()
    receiver.answer(500)
    sessions, ring = session_factory(engine), crypto.keyring_for(settings)
    assert (await delivery.send_due(sessions, http, ring, allow_private=True)).tried == 1
    assert (await delivery.send_due(sessions, http, ring, allow_private=True)).tried == 1
    assert [e["data"]["n"] for e in received(receiver, secret)] == [0, 1]


async def test_an_endpoint_failing_for_five_days_is_disabled_and_its_owners_told(
    client: httpx.AsyncClient,
    session: AsyncSession,
    engine: AsyncEngine,
    http: httpx.AsyncClient,
    settings: Settings,
    tenant: TenantKey,
    receiver: FakeProvider,
    mailbox: tuple[Mailbox, int],
) -> None:
    box, port = mailbox
    for email, role in (("owner@acme.test", "owner"), ("dev@acme.test", "developer")):
        user = User(email=email, name=role, password_hash="x")
        session.add(user)
        await session.flush()
        session.add(Membership(user_id=user.id, tenant_id=tenant.tenant_id, role=role))
    endpoint_id, _ = await endpoint_at(session, settings, tenant, f"{receiver.url}/hook")
    await record_events(session, tenant, ["m1"])
    async with session_factory(engine)() as fresh:
        await fanout.fan_out(fresh, utcnow())
    receiver.answer(500)
    run = sender(engine, http, settings)
    run.mailer = SystemMailer(f"smtp://127.0.0.1:{port}", "herald@herald.test")

    await run.send_due()  # the first failure starts the clock
    endpoint = await session.get(WebhookEndpoint, endpoint_id)
    assert endpoint is not None and endpoint.enabled and endpoint.failing_since is not None
    await session.execute(
        update(WebhookEndpoint)
        .where(WebhookEndpoint.id == endpoint_id)
        .values(failing_since=utcnow() - timedelta(days=5, seconds=1))
    )
    await session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.endpoint_id == endpoint_id)
        .values(next_attempt_at=utcnow())
    )
    await session.commit()
    await run.send_due()

    shown = (
        await client.get(f"/v1/webhook-endpoints/{endpoint_id}", headers=tenant.headers)
    ).json()
    assert shown["enabled"] is False
    assert shown["disabled_reason"] == delivery.FAILING
    [mail] = box.received
    assert mail.rcpt_tos == ["owner@acme.test"]
    text = message_from_bytes(mail.content, policy=default).get_body()
    assert text is not None and str(endpoint_id) in text.get_content()
    # Enabled again, it starts afresh.
    session.expire_all()
    enabled = await service.replace_endpoint(
        session,
        tenant_id=tenant.tenant_id,
        mode=tenant.mode,
        endpoint_id=endpoint_id,
        data=service.EndpointInput(f"{receiver.url}/hook"),
        actor="test",
        allow_private=True,
    )
    await session.commit()
    assert enabled is not None and enabled.enabled
    assert enabled.disabled_reason is None and enabled.failing_since is None


async def test_a_delivery_is_sent_again_by_hand_with_the_same_event_id(
    client: httpx.AsyncClient,
    session: AsyncSession,
    engine: AsyncEngine,
    http: httpx.AsyncClient,
    settings: Settings,
    tenant: TenantKey,
    other_tenant: TenantKey,
    receiver: FakeProvider,
) -> None:
    receiver.answer(204)
    endpoint_id, secret = await endpoint_at(session, settings, tenant, f"{receiver.url}/hook")
    await record_events(session, tenant, ["m1"])
    run = sender(engine, http, settings)
    await run.run()
    [logged] = (
        await client.get(f"/v1/webhook-endpoints/{endpoint_id}/deliveries", headers=tenant.headers)
    ).json()["data"]
    assert logged["status"] == "succeeded"
    assert logged["payload"]["type"] == "message.delivered"

    path = f"/v1/webhook-endpoints/{endpoint_id}/deliveries/{logged['id']}/resend"
    refused = await client.post(path, headers=other_tenant.headers)
    assert refused.status_code == 404
    again = await client.post(path, headers=tenant.headers)
    assert again.status_code == 202, again.text
    assert again.json()["status"] == "pending"
    await run.send_due()
    first, second = received(receiver, secret)
    assert first == second
    assert receiver.requests[0][2]["webhook-id"] == receiver.requests[1][2]["webhook-id"]
    unknown = f"/v1/webhook-endpoints/{endpoint_id}/deliveries/{uuid.uuid4()}/resend"
    assert (await client.post(unknown, headers=tenant.headers)).status_code == 404


async def test_a_notification_with_messages_pending_is_not_completed(
    client: httpx.AsyncClient,
    session: AsyncSession,
    engine: AsyncEngine,
    http: httpx.AsyncClient,
    settings: Settings,
    test_key: TenantKey,
    receiver: FakeProvider,
    service_urls: ServiceUrls,
) -> None:
    receiver.answer(204)
    _, secret = await endpoint_at(
        session, settings, test_key, f"{receiver.url}/hook", ["notification.completed"]
    )
    # A transient failure leaves the message retrying once the queues are idle.
    accepted = await send_one(client, settings, test_key, "transient@example.com")
    run = sender(engine, http, settings)
    assert (await run.run()).completed == 0
    notification = await session.get(Notification, uuid.UUID(accepted["id"]))
    assert notification is not None and notification.completed_at is None
    assert received(receiver, secret) == []


async def test_finished_deliveries_go_with_the_plans_retention_pending_ones_stay(
    session: AsyncSession,
    engine: AsyncEngine,
    http: httpx.AsyncClient,
    settings: Settings,
    tenant: TenantKey,
    receiver: FakeProvider,
) -> None:
    receiver.answer(204)
    endpoint_id, _ = await endpoint_at(session, settings, tenant, f"{receiver.url}/hook")
    await record_events(session, tenant, ["m1", "m2"])
    async with session_factory(engine)() as fresh:
        await fanout.fan_out(fresh, utcnow())
    made = list(
        await session.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.endpoint_id == endpoint_id)
            .order_by(WebhookDelivery.event_seq)
        )
    )
    # The tenant is on the free plan: 7 days.
    assert [(d.retain_until - d.created_at).days for d in made] == [7, 7]
    done, waiting = (d.id for d in made)
    await session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.endpoint_id == endpoint_id)
        .values(retain_until=utcnow() - timedelta(seconds=1))
    )
    await session.execute(
        update(WebhookDelivery).where(WebhookDelivery.id == done).values(status="succeeded")
    )
    await session.commit()
    async with session_factory(engine)() as fresh:
        assert await delivery.delete_expired(fresh, utcnow()) == 1
        await fresh.commit()
    session.expire_all()
    left = await session.scalars(
        select(WebhookDelivery.id).where(WebhookDelivery.endpoint_id == endpoint_id)
    )
    assert list(left) == [waiting]
    await session.execute(
        update(WebhookDelivery).where(WebhookDelivery.id == waiting).values(status="failed")
    )
    await session.commit()
