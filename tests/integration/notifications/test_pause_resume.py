"""Pausing and resuming a notification: held messages are neither claimed nor swept, the
resume hands them back (or the dispatch), and the statuses that allow neither answer 409."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth import keys
from app.delivery.service import Deliverer
from app.delivery.sweeper import overdue
from app.notifications.dispatch import dispatch
from app.notifications.models import Message
from app.runtime import ServiceUrls
from tests.queue_traffic import queued_jobs
from tests.send_path import notify, put_recipient, put_template, workers
from tests.support import TenantKey, assert_problem, key_of, settings_for, unmetered_renderer

MAIL = {"email": {"subject": "Hi", "text": "Hello"}}


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
    for n in range(3):
        await put_recipient(client, key, f"r{n}", email=f"r{n}@example.com")
    return key


async def control(
    client: httpx.AsyncClient, key: TenantKey, notification_id: str, verb: str
) -> httpx.Response:
    return await client.post(f"/v1/notifications/{notification_id}/{verb}", headers=key.headers)


async def messages_of(session: AsyncSession, notification_id: str) -> dict[uuid.UUID, str]:
    session.expire_all()
    rows = await session.execute(
        select(Message.id, Message.status).where(
            Message.notification_id == uuid.UUID(notification_id)
        )
    )
    return {row.id: row.status for row in rows}


async def test_a_paused_notification_holds_its_messages_until_resumed(
    client: httpx.AsyncClient,
    sender: TenantKey,
    session: AsyncSession,
    deliverer: Deliverer,
    service_urls: ServiceUrls,
) -> None:
    accepted = await notify(client, sender, template="mail", to=["r0", "r1", "r2"])
    await dispatch(
        session, notification_id=uuid.UUID(accepted["id"]), renderer=unmetered_renderer()
    )
    await session.commit()
    ids = list(await messages_of(session, accepted["id"]))
    assert len(ids) == 3

    paused = await control(client, sender, accepted["id"], "pause")
    assert paused.status_code == 200, paused.text
    assert paused.json() == {
        "id": accepted["id"],
        "object": "notification",
        "status": "paused",
        "held_messages": 3,
    }
    shown = await client.get(f"/v1/notifications/{accepted['id']}", headers=sender.headers)
    assert shown.json()["status"] == "paused"
    # Its deliver jobs run and send nothing; the sweeper does not find the messages overdue.
    assert await deliverer.deliver(ids) == []
    assert set((await messages_of(session, accepted["id"])).values()) == {"queued"}
    swept = await overdue(session, older_than=timedelta(0), limit=1_000)
    await session.commit()
    assert not {m.id for m in swept} & set(ids)
    # Pausing twice is refused, as is resuming what is not paused.
    again = await control(client, sender, accepted["id"], "pause")
    assert_problem(again, 409, "conflict")

    resumed = await control(client, sender, accepted["id"], "resume")
    assert resumed.status_code == 200, resumed.text
    assert resumed.json()["status"] == "dispatched"
    assert resumed.json()["released_messages"] == 3
    waiting = (await queued_jobs(service_urls.redis_url))["normal"]
    assert any(job.startswith(f"resume:{min(ids)}:3:") for job in waiting), waiting
    await deliverer.deliver(ids)
    assert set((await messages_of(session, accepted["id"])).values()) == {"sent"}
    assert_problem(await control(client, sender, accepted["id"], "resume"), 409, "conflict")


async def test_a_notification_paused_before_its_dispatch_is_dispatched_on_resume(
    client: httpx.AsyncClient,
    sender: TenantKey,
    session: AsyncSession,
    service_urls: ServiceUrls,
) -> None:
    accepted = await notify(client, sender, template="mail", to=["r0", "r1"])
    paused = await control(client, sender, accepted["id"], "pause")
    assert paused.json()["held_messages"] == 0
    # The dispatch job comes and goes: nothing is written while it is paused.
    done = await dispatch(
        session, notification_id=uuid.UUID(accepted["id"]), renderer=unmetered_renderer()
    )
    await session.commit()
    assert done.batches == [] and await messages_of(session, accepted["id"]) == {}

    resumed = await control(client, sender, accepted["id"], "resume")
    assert resumed.json()["status"] == "accepted"
    waiting = (await queued_jobs(service_urls.redis_url))["normal"]
    assert any(job.startswith(f"dispatch:{accepted['id']}:") for job in waiting), waiting
    written = await dispatch(
        session, notification_id=uuid.UUID(accepted["id"]), renderer=unmetered_renderer()
    )
    await session.commit()
    assert sum(len(b.message_ids) for b in written.batches) == 2


async def test_cancel_ends_a_pause_and_what_is_over_cannot_be_paused(
    client: httpx.AsyncClient, sender: TenantKey, session: AsyncSession
) -> None:
    accepted = await notify(client, sender, template="mail", to=["r0", "r1"])
    await dispatch(
        session, notification_id=uuid.UUID(accepted["id"]), renderer=unmetered_renderer()
    )
    await session.commit()
    assert (await control(client, sender, accepted["id"], "pause")).status_code == 200
    cancelled = await control(client, sender, accepted["id"], "cancel")
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["cancelled_messages"] == 2
    assert set((await messages_of(session, accepted["id"])).values()) == {"cancelled"}
    refused = await control(client, sender, accepted["id"], "pause")
    assert_problem(refused, 409, "conflict")
    assert refused.json()["notification_status"] == "cancelled"
    assert_problem(await control(client, sender, accepted["id"], "resume"), 409, "conflict")


async def test_pause_and_resume_stay_in_the_tenant_mode_and_scope(
    client: httpx.AsyncClient,
    sender: TenantKey,
    tenant: TenantKey,
    other_tenant: TenantKey,
    session: AsyncSession,
) -> None:
    accepted = await notify(client, sender, template="mail", to=["r0"])
    for stranger in (other_tenant, tenant):  # another tenant; the live key of the same one
        for verb in ("pause", "resume"):
            assert_problem(await control(client, stranger, accepted["id"], verb), 404, "not_found")
    limited = await keys.issue_key(
        session,
        tenant_id=tenant.tenant_id,
        name="reader",
        mode="test",
        scopes=["read"],
        actor="test",
    )
    await session.commit()
    read_only = TenantKey(tenant.tenant_id, limited.key.id, limited.secret)
    assert_problem(
        await control(client, read_only, accepted["id"], "pause"), 403, "insufficient_scope"
    )
