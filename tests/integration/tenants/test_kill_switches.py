"""Kill switches per (tenant, channel): the API, its audit trail and isolation, atomic
updates under concurrency, `drop_noncritical` at dispatch through real workers, and the
release of held messages when a pause is lifted."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit import service as audit
from app.audit.models import AuditEntry
from app.categories.service import CategoryView
from app.db import utcnow
from app.delivery import claims, held, outbox
from app.notifications.dispatch import dispatch
from app.notifications.models import Message
from app.recipients import service as recipients
from app.runtime import ServiceUrls
from app.tenants import delivery_controls
from app.tenants.models import Tenant
from jobs import queues
from tests.queue_traffic import queue_traffic, queued_jobs
from tests.send_path import drain, notification, notify, put_recipient, put_template, workers
from tests.support import (
    TenantKey,
    assert_problem,
    live_key,
    make_tenant,
    settings_for,
    unmetered_renderer,
)

CONTENT = {
    "email": {"subject": "Hello {{ name }}", "text": "Hi {{ name }}"},
    "inbox": {"title": "Hello", "body": "Hi {{ name }}"},
}


@pytest.fixture
async def sandbox(session: AsyncSession) -> TenantKey:
    return await make_tenant(session, "Switched", mode="test")


@pytest.fixture
async def sandbox_admin(session: AsyncSession, sandbox: TenantKey) -> TenantKey:
    """The sandbox tenant's live key: switches are live settings, no test key changes them."""
    return await live_key(session, sandbox)


async def switch(
    client: httpx.AsyncClient, tenant: TenantKey, channel: str, mode: str
) -> dict[str, Any]:
    response = await client.put(
        f"/v1/tenant/kill-switches/{channel}", headers=tenant.headers, json={"mode": mode}
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def switches(client: httpx.AsyncClient, tenant: TenantKey) -> dict[str, str]:
    response = await client.get("/v1/tenant/kill-switches", headers=tenant.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "kill_switches"
    channels: dict[str, str] = body["channels"]
    return channels


async def run_workers(service_urls: ServiceUrls) -> None:
    async with workers(settings_for(service_urls.database_url, service_urls.redis_url)) as ctx:
        await drain(ctx, service_urls.redis_url)


def by_channel(view: dict[str, Any]) -> dict[str, tuple[str, str | None]]:
    return {m["channel"]: (m["status"], m["skip_reason"]) for m in view["messages"]}


async def test_round_trip(client: httpx.AsyncClient, tenant: TenantKey) -> None:
    assert await switches(client, tenant) == {}

    paused = await switch(client, tenant, "email", "pause")
    assert paused == {
        "object": "kill_switch",
        "channel": "email",
        "mode": "pause",
        "previous": "off",
        "channels": {"email": "pause"},
        "released": 0,
        "dropped": 0,
    }
    dropped = await switch(client, tenant, "sms", "drop_noncritical")
    assert dropped["channels"] == {"email": "pause", "sms": "drop_noncritical"}
    assert await switches(client, tenant) == {"email": "pause", "sms": "drop_noncritical"}

    who = (await client.get("/v1/tenant", headers=tenant.headers)).json()
    assert who["kill_switches"] == {"email": "pause", "sms": "drop_noncritical"}

    changed = await switch(client, tenant, "sms", "pause")
    assert (changed["previous"], changed["mode"]) == ("drop_noncritical", "pause")
    off = await switch(client, tenant, "email", "off")
    assert (off["previous"], off["mode"], off["channels"]) == ("pause", "off", {"sms": "pause"})
    assert (await switch(client, tenant, "email", "off"))["previous"] == "off"  # idempotent
    assert await switches(client, tenant) == {"sms": "pause"}


async def test_changes_are_audited(
    client: httpx.AsyncClient, tenant: TenantKey, session: AsyncSession
) -> None:
    await switch(client, tenant, "push", "drop_noncritical")
    await switch(client, tenant, "push", "off")
    entries = (
        await session.scalars(
            select(AuditEntry)
            .where(
                AuditEntry.tenant_id == tenant.tenant_id,
                AuditEntry.action == "tenant.kill_switch",
            )
            .order_by(AuditEntry.seq)
        )
    ).all()
    assert [(e.target, e.details) for e in entries] == [
        ("push", {"mode": "drop_noncritical", "previous": "off", "dropped": 0}),
        ("push", {"mode": "off", "previous": "drop_noncritical", "dropped": 0}),
    ]
    assert all(e.actor.startswith("api_key:hk_live_") for e in entries)
    assert await audit.verify(session, tenant_id=tenant.tenant_id) == []


@pytest.mark.parametrize(
    ("channel", "body", "field"),
    [
        ("fax", {"mode": "pause"}, "channel"),
        ("EMAIL", {"mode": "pause"}, "channel"),
        ("email", {"mode": "stop"}, "mode"),
        ("email", {"mode": None}, "mode"),
        ("email", {}, "mode"),
        ("email", {"mode": "pause", "until": "tomorrow"}, "until"),
    ],
)
async def test_bad_input(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    session: AsyncSession,
    channel: str,
    body: dict[str, Any],
    field: str,
) -> None:
    response = await client.put(
        f"/v1/tenant/kill-switches/{channel}", headers=tenant.headers, json=body
    )
    problem = assert_problem(response, 422, "validation_error")
    assert [e["field"] for e in problem["errors"]] == [field]  # type: ignore[attr-defined]
    assert await switches(client, tenant) == {}
    with pytest.raises(delivery_controls.SettingInvalid) as refused:
        await delivery_controls.set_kill_switch(
            session, tenant_id=tenant.tenant_id, channel="fax", mode="pause", actor="test"
        )
    assert refused.value.field == "channel"
    await session.rollback()


async def test_not_json(client: httpx.AsyncClient, tenant: TenantKey) -> None:
    response = await client.put(
        "/v1/tenant/kill-switches/email",
        headers={**tenant.headers, "content-type": "application/json"},
        content=b"{mode",
    )
    assert_problem(response, 400, "invalid_json")


async def test_scopes(client: httpx.AsyncClient, session: AsyncSession) -> None:
    reader = await make_tenant(session, "Reader", scopes=["read"])
    sender = await make_tenant(session, "Sender", scopes=["send"])
    assert await switches(client, reader) == {}
    response = await client.put(
        "/v1/tenant/kill-switches/email", headers=reader.headers, json={"mode": "pause"}
    )
    assert_problem(response, 403, "insufficient_scope")
    response = await client.get("/v1/tenant/kill-switches", headers=sender.headers)
    assert_problem(response, 403, "insufficient_scope")
    assert await delivery_controls.get_kill_switches(session, tenant_id=reader.tenant_id) == {}


async def test_test_keys_cannot_switch_live_sending(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    sandbox = await make_tenant(session, "Both", mode="test")
    response = await client.put(
        "/v1/tenant/kill-switches/sms", headers=sandbox.headers, json={"mode": "pause"}
    )
    assert_problem(response, 403, "live_mode_required")
    assert await delivery_controls.get_kill_switches(session, tenant_id=sandbox.tenant_id) == {}
    # A test key still reads them; a live key's switch holds for the whole tenant.
    await switch(client, await live_key(session, sandbox), "sms", "pause")
    assert await switches(client, sandbox) == {"sms": "pause"}


async def test_tenant_isolation(
    client: httpx.AsyncClient, tenant: TenantKey, other_tenant: TenantKey, session: AsyncSession
) -> None:
    await switch(client, tenant, "email", "pause")
    assert await switches(client, other_tenant) == {}
    # The other tenant's key can only ever change its own row.
    await switch(client, other_tenant, "email", "drop_noncritical")
    await switch(client, other_tenant, "sms", "pause")
    released = await switch(client, other_tenant, "email", "off")
    assert released["channels"] == {"sms": "pause"}
    assert await switches(client, tenant) == {"email": "pause"}
    assert await switches(client, other_tenant) == {"sms": "pause"}
    row = await session.scalar(
        select(Tenant.kill_switches)
        .where(Tenant.id == tenant.tenant_id)
        .execution_options(populate_existing=True)
    )
    assert row == {"email": "pause"}
    who = (await client.get("/v1/tenant", headers=other_tenant.headers)).json()
    assert who["kill_switches"] == {"sms": "pause"}


async def test_concurrent_switches_all_stick(client: httpx.AsyncClient, tenant: TenantKey) -> None:
    modes = {
        "email": "pause",
        "sms": "drop_noncritical",
        "push": "pause",
        "webhook": "drop_noncritical",
        "inbox": "pause",
    }
    for _ in range(5):
        answers = await asyncio.gather(*(switch(client, tenant, c, m) for c, m in modes.items()))
        assert all(a["previous"] == "off" for a in answers)
        assert await switches(client, tenant) == modes
        await asyncio.gather(*(switch(client, tenant, c, "off") for c in modes))
        assert await switches(client, tenant) == {}


async def test_one_of_concurrent_resumes_sees_the_pause(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    await switch(client, tenant, "email", "pause")
    answers = await asyncio.gather(*(switch(client, tenant, "email", "off") for _ in range(10)))
    assert sorted(a["previous"] for a in answers) == ["off"] * 9 + ["pause"]


async def test_planning_drops_noncritical_channels(
    session: AsyncSession, client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    await put_recipient(client, tenant, "ada", email="ada@example.com")
    people = await recipients.get_by_external_ids(
        session, tenant_id=tenant.tenant_id, mode=tenant.mode, external_ids=["ada"]
    )
    marketing = CategoryView("marketing", "Marketing", critical=False)
    security = CategoryView("security", "Security", critical=True)
    channels = ["email", "sms", "inbox"]

    async def plan(category: CategoryView, kill: dict[str, str]) -> list[tuple[str, str | None]]:
        plans = await recipients.plan_deliveries(
            session,
            tenant_id=tenant.tenant_id,
            mode=tenant.mode,
            recipients=people,
            channels=channels,
            category=category,
            kill_switches=kill,
        )
        return [(p.channel, p.skip_reason) for p in plans]

    kill = {"email": "drop_noncritical", "sms": "drop_noncritical", "inbox": "pause"}
    assert await plan(marketing, kill) == [
        ("email", "kill_switch"),
        ("sms", "kill_switch"),  # the switch wins over a missing address
        ("inbox", None),  # pause holds at delivery, not at dispatch
    ]
    assert await plan(security, kill) == [("email", None), ("sms", "no_address"), ("inbox", None)]
    assert await plan(marketing, {}) == [("email", None), ("sms", "no_address"), ("inbox", None)]


async def test_drop_noncritical_through_the_send_path(
    sandbox_admin: TenantKey,
    client: httpx.AsyncClient,
    sandbox: TenantKey,
    service_urls: ServiceUrls,
) -> None:
    await put_template(client, sandbox, "news", CONTENT)
    await put_recipient(client, sandbox, "ada", email="ada@example.com")
    await switch(client, sandbox_admin, "email", "drop_noncritical")

    promo = await notify(
        client, sandbox, template="news", to=["ada"], category="marketing", data={"name": "A"}
    )
    otp = await notify(
        client, sandbox, template="news", to=["ada"], category="security", data={"name": "A"}
    )
    await run_workers(service_urls)

    assert by_channel(await notification(client, sandbox, promo["id"])) == {
        "email": ("skipped", "kill_switch"),
        "inbox": ("sent", None),
    }
    assert by_channel(await notification(client, sandbox, otp["id"])) == {
        "email": ("sent", None),
        "inbox": ("sent", None),
    }

    # Switched back on, the channel flows again for every category.
    await switch(client, sandbox_admin, "email", "off")
    later = await notify(
        client, sandbox, template="news", to=["ada"], category="marketing", data={"name": "A"}
    )
    await run_workers(service_urls)
    assert by_channel(await notification(client, sandbox, later["id"]))["email"] == ("sent", None)


async def test_drop_noncritical_skips_messages_already_waiting(
    sandbox_admin: TenantKey,
    client: httpx.AsyncClient,
    sandbox: TenantKey,
    session: AsyncSession,
    service_urls: ServiceUrls,
) -> None:
    """A campaign gone wrong is stopped where it stands: its queued and retrying messages
    are skipped at once; critical ones, other channels and other tenants keep going."""
    other = await make_tenant(session, "Neighbour", mode="test")
    response = await client.put(
        "/v1/categories/otp", headers=sandbox.headers, json={"name": "OTP", "critical": True}
    )
    assert response.status_code in (200, 201), response.text
    for tenant in (sandbox, other):
        await put_template(client, tenant, "news", CONTENT)
        await put_recipient(client, tenant, "ada", email="ada@example.com")
    sent = {}
    for tenant, category in (
        (sandbox, "marketing"),
        (sandbox, "otp"),
        (sandbox, "security"),
        (other, "marketing"),
    ):
        accepted = await notify(
            client, tenant, template="news", to=["ada"], category=category, data={"name": "A"}
        )
        await dispatch(
            session, notification_id=uuid.UUID(accepted["id"]), renderer=unmetered_renderer()
        )
        await session.commit()
        sent[(tenant.tenant_id, category)] = (tenant, accepted["id"])
    [promo_email] = [
        m["id"]
        for m in (await notification(client, sandbox, sent[(sandbox.tenant_id, "marketing")][1]))[
            "messages"
        ]
        if m["channel"] == "email"
    ]
    await session.execute(
        update(Message).where(Message.id == uuid.UUID(promo_email)).values(status="retrying")
    )
    await session.commit()

    changed = await switch(client, sandbox_admin, "email", "drop_noncritical")
    assert changed["dropped"] == 1
    await run_workers(service_urls)

    def view(tenant_id: uuid.UUID, category: str) -> Any:
        tenant, notification_id = sent[(tenant_id, category)]
        return notification(client, tenant, notification_id)

    assert by_channel(await view(sandbox.tenant_id, "marketing")) == {
        "email": ("skipped", "kill_switch"),
        "inbox": ("sent", None),
    }
    for category in ("otp", "security"):
        assert by_channel(await view(sandbox.tenant_id, category))["email"] == ("sent", None)
    assert by_channel(await view(other.tenant_id, "marketing"))["email"] == ("sent", None)


async def test_a_message_given_back_after_the_switch_is_skipped_at_its_claim(
    sandbox_admin: TenantKey,
    client: httpx.AsyncClient,
    sandbox: TenantKey,
    session: AsyncSession,
    service_urls: ServiceUrls,
) -> None:
    """Being sent when drop_noncritical was set, then given back (no token, a breaker, a
    shutdown): the next claim skips it; a critical one given back the same way is sent."""
    await put_template(client, sandbox, "news", {"email": CONTENT["email"]})
    await put_recipient(client, sandbox, "ada", email="ada@example.com")
    ids = {}
    for category in ("marketing", "security"):
        accepted = await notify(
            client, sandbox, template="news", to=["ada"], category=category, data={"name": "A"}
        )
        await dispatch(
            session, notification_id=uuid.UUID(accepted["id"]), renderer=unmetered_renderer()
        )
        await session.commit()
        [message] = (await notification(client, sandbox, accepted["id"]))["messages"]
        ids[category] = uuid.UUID(message["id"])
    in_flight = await claims.claim(session, list(ids.values()))
    await session.commit()

    assert (await switch(client, sandbox_admin, "email", "drop_noncritical"))["dropped"] == 0
    await claims.release(session, [(message, utcnow()) for message in in_flight])
    await session.commit()
    settings = settings_for(service_urls.database_url, service_urls.redis_url)
    async with workers(settings) as ctx:
        assert await ctx["deliverer"].deliver(list(ids.values())) == []

    rows = await session.execute(
        select(Message.id, Message.status, Message.skip_reason, Message.attempts).where(
            Message.id.in_(ids.values())
        )
    )
    found = {row.id: (row.status, row.skip_reason, row.attempts) for row in rows}
    assert found == {
        ids["marketing"]: ("skipped", "kill_switch", 0),
        ids["security"]: ("sent", None, 1),
    }


async def test_lifting_a_pause_releases_held_messages(
    sandbox_admin: TenantKey,
    client: httpx.AsyncClient,
    sandbox: TenantKey,
    session: AsyncSession,
    service_urls: ServiceUrls,
) -> None:
    other = await make_tenant(session, "Neighbour", mode="test")
    for tenant in (sandbox, other):
        await put_template(client, tenant, "news", CONTENT)
        await put_recipient(client, tenant, "ada", email="ada@example.com")
        await put_recipient(client, tenant, "bob", email="bob@example.com")
        await switch(client, await live_key(session, tenant), "email", "pause")
    await run_workers(service_urls)  # nothing left over from earlier tests

    def send(tenant: TenantKey, priority: str, to: list[str]) -> Any:
        body = {"template": "news", "to": to, "priority": priority, "data": {"name": "A"}}
        if priority == "high":  # what high priority is for (a pause holds it all the same)
            body["category"] = "security"
        return notify(client, tenant, **body)

    urgent = await send(sandbox, "high", ["ada"])
    bulk = await send(sandbox, "normal", ["ada", "bob"])
    later = await send(sandbox, "low", ["bob"])
    neighbour = await send(other, "normal", ["ada"])
    # Dispatch (run here, not by a worker) still writes the paused channel's messages.
    for accepted in (urgent, bulk, later, neighbour):
        await dispatch(
            session, notification_id=uuid.UUID(accepted["id"]), renderer=unmetered_renderer()
        )
        await session.commit()
    held = by_channel(await notification(client, sandbox, urgent["id"]))
    assert held == {"email": ("queued", None), "inbox": ("queued", None)}
    # Workers running meanwhile claim nothing of the paused channel: it stays queued.
    urgent_ids = [
        uuid.UUID(m["id"]) for m in (await notification(client, sandbox, urgent["id"]))["messages"]
    ]
    pool = await queues.connect(service_urls.redis_url)
    try:
        await queues.outbox(pool).enqueue([outbox.deliver("high", urgent_ids)])
    finally:
        await pool.aclose()
    await run_workers(service_urls)
    held = by_channel(await notification(client, sandbox, urgent["id"]))
    assert held == {"email": ("queued", None), "inbox": ("sent", None)}
    # A retry due later keeps the deferred job that will deliver it: not released.
    [retry_later] = [
        m["id"]
        for m in (await notification(client, sandbox, later["id"]))["messages"]
        if m["channel"] == "email"
    ]
    await session.execute(
        update(Message)
        .where(Message.id == uuid.UUID(retry_later))
        .values(status="retrying", next_attempt_at=utcnow() + timedelta(hours=1))
    )
    await session.commit()

    resumed = await switch(client, sandbox_admin, "email", "off")
    # ada (high), ada and bob (normal); not the inbox, the neighbour, or the later retry.
    assert resumed["released"] == 3
    jobs = await queued_jobs(service_urls.redis_url)
    assert [j for j in jobs["high"] if j.startswith("resume:")] != []
    assert [j for j in jobs["normal"] if j.startswith("resume:")] != []
    assert [j for j in jobs["low"] if j.startswith("resume:")] == []
    assert (await switch(client, sandbox_admin, "email", "off"))["released"] == 0

    await run_workers(service_urls)
    for accepted in (urgent, bulk):
        view = await notification(client, sandbox, accepted["id"])
        assert {m["status"] for m in view["messages"]} == {"sent"}, view["messages"]
    statuses = {
        m["id"]: m["status"] for m in (await notification(client, sandbox, later["id"]))["messages"]
    }
    assert statuses[retry_later] == "retrying"


async def test_held_messages_are_read_in_bounded_pages(
    client: httpx.AsyncClient, sandbox: TenantKey, session: AsyncSession
) -> None:
    """Releasing reads a paused channel's messages page by page (keyset on the id), high
    priority first, each page and each deliver batch within its bound, none twice."""
    await put_template(client, sandbox, "news", {"email": CONTENT["email"]})
    people = [f"p{n}" for n in range(7)]
    for who in people:
        await put_recipient(client, sandbox, who, email=f"{who}@example.com")
    await switch(client, await live_key(session, sandbox), "email", "pause")
    urgent = await notify(
        client,
        sandbox,
        template="news",
        to=people[:2],
        priority="high",
        category="security",
        data={"name": "A"},
    )
    bulk = await notify(client, sandbox, template="news", to=people, data={"name": "B"})
    for accepted in (urgent, bulk):
        await dispatch(
            session, notification_id=uuid.UUID(accepted["id"]), renderer=unmetered_renderer()
        )
        await session.commit()

    pages = [
        page
        async for page in held.held_pages(
            session, tenant_id=sandbox.tenant_id, channel="email", size=2, page=3
        )
    ]
    assert [sum(len(ids) for _, ids in page) for page in pages] == [3, 3, 3]
    assert all(0 < len(ids) <= 2 for page in pages for _, ids in page)
    for page in pages:  # each batch of one priority, high first within its page
        priorities = [priority for priority, _ in page]
        assert priorities == sorted(priorities, key=["high", "normal", "low"].index)
    released = {i: priority for page in pages for priority, ids in page for i in ids}
    assert sum(len(ids) for page in pages for _, ids in page) == len(released) == 9
    assert sorted(released.values()) == ["high"] * 2 + ["normal"] * 7
    waiting = await session.scalars(
        select(Message.id).where(
            Message.tenant_id == sandbox.tenant_id,
            Message.channel == "email",
            Message.status == "queued",
        )
    )
    assert sorted(released) == sorted(waiting)
    # Pages follow the ids: every id of a page is past the previous page's.
    for before, after in itertools.pairwise(pages):
        assert max(i for _, ids in before for i in ids) < min(i for _, ids in after for i in ids)
    # A page cut exactly at its bound is followed by one that finds nothing more.
    exact = [
        page
        async for page in held.held_pages(
            session, tenant_id=sandbox.tenant_id, channel="email", page=9
        )
    ]
    assert [(priority, len(ids)) for page in exact for priority, ids in page] == [
        ("high", 2),
        ("normal", 7),
    ]


async def test_a_large_release_goes_in_pages_of_one_redis_round_trip(
    sandbox_admin: TenantKey,
    client: httpx.AsyncClient,
    sandbox: TenantKey,
    session: AsyncSession,
    service_urls: ServiceUrls,
) -> None:
    """250 held messages are released in one page (pages hold up to 1,000): one read and
    one enqueue of its three deliver batches, not one round trip per batch."""
    await put_template(client, sandbox, "news", CONTENT)
    await switch(client, sandbox_admin, "email", "pause")
    await run_workers(service_urls)  # nothing left over from earlier tests
    many = [
        {"external_id": f"held-{i}", "email": f"held-{i}@example.com"}
        for i in range(2 * outbox.BATCH_SIZE + 50)
    ]
    accepted = await notify(client, sandbox, template="news", to=many, data={"name": "A"})
    await dispatch(
        session, notification_id=uuid.UUID(accepted["id"]), renderer=unmetered_renderer()
    )
    await session.commit()
    await run_workers(service_urls)  # the inbox goes; the paused e-mail is held

    async with queue_traffic(service_urls.redis_url) as traffic:
        resumed = await switch(client, sandbox_admin, "email", "off")
    assert resumed["released"] == 250
    assert traffic.round_trips == 1  # one page: batches of 100, 100 and 50
    resumes = [
        j for j in (await queued_jobs(service_urls.redis_url))["normal"] if j.startswith("resume:")
    ]
    assert sorted(int(j.split(":")[2]) for j in resumes) == [50, 100, 100]

    await run_workers(service_urls)
    view = await notification(client, sandbox, accepted["id"])
    assert view["counts"] == {"sent": 500}
