"""Erasure after real sends: no table keeps the person, counts stay, nothing more goes out.

Live tenants deliver through a real SMTP server (aiosmtpd) with real arq workers. The server
refuses chosen addresses with a reply quoting them, as real ones do, and can hold a send
mid-conversation so that erasure happens while a worker is sending.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import Envelope, Session
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.db import session_factory
from app.notifications.dispatch import dispatch
from app.recipients import service as recipients
from app.recipients.erasure import ERASED_TEXT, erase_recipient
from app.runtime import ServiceUrls
from jobs import functions, queues
from tests.fakes import Mailbox
from tests.send_path import drain, notification, notify, put_recipient, put_template, workers
from tests.support import TenantKey, free_port, settings_for, unmetered_renderer

# The tag is searched for in every row: q, z and k are no hex digits, so no id can hold it.
LEAVER = "leaver-qz7k"
ADDRESS = "leaver.qz7k@example.com"
NAME = "Lea Ver"
TRACES = (ADDRESS, LEAVER, NAME)
WELCOME = {
    # Reads `recipient`: rendered once per recipient, with the address in it.
    "email": {"subject": "Hello", "text": "Hi {{ recipient.data.name }} <{{ recipient.email }}>"},
    # Does not: one render shared by the notification's recipients.
    "inbox": {"title": "{{ note }}", "body": "Welcome", "action_url": "https://acme.test/x"},
}


@dataclass
class Relay(Mailbox):
    """Refuses `refused` addresses quoting them (550 is a dead mailbox, 451 a busy one);
    while `gate` is closed, every RCPT waits. Each RCPT is noted in `waiting` and `arrived`."""

    refused: dict[str, int] = field(default_factory=dict)
    gate: threading.Event = field(default_factory=threading.Event)
    waiting: list[str] = field(default_factory=list)
    arrived: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))

    def __post_init__(self) -> None:
        self.gate.set()

    async def handle_RCPT(
        self,
        server: SMTPServer,
        session: Session,
        envelope: Envelope,
        address: str,
        options: list[str],
    ) -> str:
        self.waiting.append(address)
        self.arrived.release()
        await asyncio.to_thread(self.gate.wait)
        if address in self.refused:
            code = self.refused[address]
            return f"{code} 5.1.1 <{address}>: Recipient address rejected"
        envelope.rcpt_tos.append(address)
        return "250 OK"


@pytest.fixture
def relay() -> Iterator[tuple[Relay, int]]:
    box, port = Relay(), free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    yield box, port
    controller.stop()


async def use_relay(client: httpx.AsyncClient, owner: TenantKey, port: int) -> None:
    provider = {
        "channel": "email",
        "provider": "smtp",
        "name": "local relay",
        "options": {"host": "127.0.0.1", "port": port, "security": "none", "from_email": "a@b.c"},
    }
    response = await client.post("/v1/providers", headers=owner.headers, json=provider)
    assert response.status_code == 201, response.text
    await put_template(client, owner, "welcome", WELCOME)
    await put_recipient(client, owner, LEAVER, email=ADDRESS, data={"name": NAME})


async def run_workers(service_urls: ServiceUrls) -> None:
    settings = settings_for(
        service_urls.database_url, service_urls.redis_url, HERALD_ALLOW_PRIVATE_URLS="true"
    )
    async with workers(settings) as ctx:
        await drain(ctx, service_urls.redis_url)


async def erase(client: httpx.AsyncClient, owner: TenantKey, external_id: str) -> None:
    response = await client.delete(f"/v1/recipients/{external_id}", headers=owner.headers)
    assert response.status_code == 200, response.text


async def rows_naming(session: AsyncSession, owner: TenantKey, needle: str) -> dict[str, int]:
    """Per table, how many rows of the tenant (every row where there is no tenant_id) hold
    `needle` anywhere, in any case."""
    tables = await session.execute(
        text(
            "SELECT table_name, bool_or(column_name = 'tenant_id') FROM information_schema.columns"
            " WHERE table_schema = 'public' GROUP BY table_name ORDER BY table_name"
        )
    )
    found: dict[str, int] = {}
    for table, scoped in tables.all():
        scope = "t.tenant_id = :tenant_id AND" if scoped else ""
        count = await session.scalar(
            text(f'SELECT count(*) FROM "{table}" AS t WHERE {scope} t::text ILIKE :pattern'),
            {"tenant_id": owner.tenant_id, "pattern": f"%{needle}%"},
        )
        if count:
            found[table] = count
    return found


async def traces(session: AsyncSession, owner: TenantKey) -> dict[str, dict[str, int]]:
    return {needle: await rows_naming(session, owner, needle) for needle in TRACES}


async def counts(session: AsyncSession, owner: TenantKey) -> dict[str, Any]:
    """What a tenant's delivery figures are made of: messages and attempts, by kind."""
    messages = await session.execute(
        text(
            "SELECT channel, provider, status = 'sent', count(*) FROM messages"
            " WHERE tenant_id = :t GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
        ),
        {"t": owner.tenant_id},
    )
    attempts = await session.execute(
        text(
            "SELECT provider, outcome, error_class, status_code, count(*) FROM attempts"
            " WHERE tenant_id = :t GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4"
        ),
        {"t": owner.tenant_id},
    )
    return {"messages": messages.all(), "attempts": attempts.all()}


async def messages_of(
    client: httpx.AsyncClient, owner: TenantKey, notification_id: str
) -> list[dict[str, Any]]:
    view = await notification(client, owner, notification_id)
    result: list[dict[str, Any]] = view["messages"]
    return result


async def sent_then_bounced(
    client: httpx.AsyncClient, owner: TenantKey, box: Relay, service_urls: ServiceUrls
) -> tuple[str, str]:
    """One notification to the leaver and a stayer (sent), then one to the leaver alone
    that hard-bounces, suppressing the address."""
    await put_recipient(client, owner, "stayer", email="stayer@example.com", data={"name": "S"})
    first = await notify(
        client, owner, template="welcome", to=[LEAVER, "stayer"], data={"note": "n"}
    )
    await run_workers(service_urls)
    box.refused[ADDRESS] = 550
    second = await notify(
        client, owner, template="welcome", to=[LEAVER], data={"note": f"{NAME}'s order"}
    )
    await run_workers(service_urls)
    bounced = {(m["channel"], m["status"]) for m in await messages_of(client, owner, second["id"])}
    assert bounced == {("email", "failed"), ("inbox", "sent")}
    return first["id"], second["id"]


async def test_erasure_leaves_no_trace_and_keeps_the_counts(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    other_tenant: TenantKey,
    session: AsyncSession,
    service_urls: ServiceUrls,
    relay: tuple[Relay, int],
) -> None:
    box, port = relay
    for owner in (tenant, other_tenant):  # the same external id and address in both
        await use_relay(client, owner, port)
    other = await notify(client, other_tenant, template="welcome", to=[LEAVER], data={"note": "x"})
    first, second = await sent_then_bounced(client, tenant, box, service_urls)
    assert sorted(e.rcpt_tos[0] for e in box.received) == [ADDRESS, ADDRESS, "stayer@example.com"]
    before = await traces(session, tenant)
    # Where the person was: the sends, their rendered content, the bounce and its error.
    assert set(before[ADDRESS]) >= {"recipients", "messages", "renders", "attempts", "suppressions"}
    assert set(before[LEAVER]) >= {"notifications", "messages"}
    assert set(before[NAME]) >= {"recipients", "renders", "notifications"}
    counted = await counts(session, tenant)

    await erase(client, tenant, LEAVER)

    assert await traces(session, tenant) == {needle: {} for needle in TRACES}
    assert await counts(session, tenant) == counted
    leaver_first = [
        m for m in await messages_of(client, tenant, first) if m["recipient"] != "stayer"
    ]
    assert {(m["channel"], m["status"], m["skip_reason"]) for m in leaver_first} == {
        ("email", "sent", None),
        ("inbox", "sent", None),
    }
    assert all(m["address"] == f"erased:{m['id']}" for m in leaver_first)
    assert all(m["recipient"].startswith("erased:") for m in leaver_first)
    # The bounced message leaves the dead-letter queue: nobody may replay it to the person.
    view = await notification(client, tenant, second)
    assert view["counts"] == {"cancelled": 1, "sent": 1}
    [bounced] = [m for m in view["messages"] if m["channel"] == "email"]
    assert (bounced["status"], bounced["skip_reason"]) == ("cancelled", "erased")
    assert (bounced["error_class"], bounced["last_error"]) == ("permanent", ERASED_TEXT)
    detail = await client.get(f"/v1/messages/{bounced['id']}", headers=tenant.headers)
    [attempt] = detail.json()["history"]
    assert (attempt["outcome"], attempt["status_code"], attempt["error"]) == (
        "failed",
        550,
        ERASED_TEXT,
    )
    dlq = await client.get("/v1/dlq", headers=tenant.headers)
    assert dlq.status_code == 200 and dlq.json()["data"] == []

    # Whoever shared a notification with them keeps everything.
    inbox = await client.get("/v1/recipients/stayer/inbox", headers=tenant.headers)
    assert [item["title"] for item in inbox.json()["data"]] == ["n"]
    stayer = [m for m in await messages_of(client, tenant, first) if m["recipient"] == "stayer"]
    assert {m["address"] for m in stayer} == {"stayer@example.com", "stayer"}
    # Another tenant's recipient of the same id and address is untouched.
    kept = await client.get(f"/v1/recipients/{LEAVER}", headers=other_tenant.headers)
    assert kept.status_code == 200 and kept.json()["email"] == ADDRESS
    assert {m["address"] for m in await messages_of(client, other_tenant, other["id"])} == {
        ADDRESS,
        LEAVER,
    }
    assert set(await rows_naming(session, other_tenant, ADDRESS)) >= {"messages", "renders"}


async def test_an_erased_address_stays_suppressed(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    session: AsyncSession,
    service_urls: ServiceUrls,
    relay: tuple[Relay, int],
) -> None:
    box, port = relay
    await use_relay(client, tenant, port)
    await sent_then_bounced(client, tenant, box, service_urls)
    await erase(client, tenant, LEAVER)

    listed = await client.get(
        "/v1/suppressions", headers=tenant.headers, params={"address": ADDRESS.upper()}
    )
    [suppression] = listed.json()["data"]
    assert suppression["address"].startswith("erased:") and ADDRESS not in suppression["address"]
    assert suppression["reason"] == "hard_bounce"
    # The person signs up again, under another id: the bounce still protects the address.
    await put_recipient(client, tenant, "newcomer", email=ADDRESS, data={"name": "N"})
    again = await notify(client, tenant, template="welcome", to=["newcomer"], data={"note": "n"})
    await run_workers(service_urls)
    by_channel = {m["channel"]: m for m in await messages_of(client, tenant, again["id"])}
    assert (by_channel["email"]["status"], by_channel["email"]["skip_reason"]) == (
        "skipped",
        "suppressed",
    )
    assert box.waiting.count(ADDRESS) == 2  # the first send, and the one that bounced


async def test_queued_messages_are_cancelled_and_never_sent(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    service_urls: ServiceUrls,
    relay: tuple[Relay, int],
) -> None:
    box, port = relay
    await use_relay(client, tenant, port)
    accepted = await notify(client, tenant, template="welcome", to=[LEAVER], data={"note": "n"})
    settings = settings_for(
        service_urls.database_url, service_urls.redis_url, HERALD_ALLOW_PRIVATE_URLS="true"
    )
    async with workers(settings) as ctx:
        # Dispatched, and its delivery jobs queued: the workers have not run them yet.
        ctx["redis"] = await queues.connect(service_urls.redis_url)
        await functions.dispatch(ctx, accepted["id"])
        await ctx["redis"].aclose()
        assert {m["status"] for m in await messages_of(client, tenant, accepted["id"])} == {
            "queued"
        }
        await erase(client, tenant, LEAVER)
        await drain(ctx, service_urls.redis_url)
    assert box.received == [] and box.waiting == []
    view = await notification(client, tenant, accepted["id"])
    assert view["counts"] == {"cancelled": 2}
    assert {m["skip_reason"] for m in view["messages"]} == {"erased"}


async def test_a_send_in_flight_is_neither_retried_nor_recorded_with_the_address(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    session: AsyncSession,
    service_urls: ServiceUrls,
    relay: tuple[Relay, int],
) -> None:
    box, port = relay
    await use_relay(client, tenant, port)
    busy = "busy.qz7k@example.com"
    await put_recipient(client, tenant, "busy-qz7k", email=busy, data={"name": "B"})
    box.refused = {ADDRESS: 550, busy: 451}  # a dead mailbox (suppress), a busy one (retry)
    box.gate.clear()
    accepted = await notify(
        client, tenant, template="welcome", to=[LEAVER, "busy-qz7k"], channels=["email"]
    )
    sending = asyncio.create_task(run_workers(service_urls))
    for _ in range(2):
        assert await asyncio.to_thread(box.arrived.acquire, timeout=30), "no send started"
    assert sorted(box.waiting) == sorted([ADDRESS, busy])
    # Both are with the SMTP server now: erased mid-send.
    await erase(client, tenant, LEAVER)
    await erase(client, tenant, "busy-qz7k")
    box.gate.set()
    await sending

    view = await notification(client, tenant, accepted["id"])
    assert view["counts"] == {"cancelled": 2}  # not retrying: nothing more goes out
    assert all(m["next_attempt_at"] is None for m in view["messages"])
    for message in view["messages"]:
        detail = (await client.get(f"/v1/messages/{message['id']}", headers=tenant.headers)).json()
        [attempt] = detail["history"]
        assert attempt["outcome"] == "failed" and attempt["error"] == ERASED_TEXT
    for needle in (ADDRESS, busy, "qz7k"):
        assert await rows_naming(session, tenant, needle) == {}, needle
    # The dead mailbox is suppressed all the same, as a digest.
    await put_recipient(client, tenant, "newcomer", email=ADDRESS, data={"name": "N"})
    again = await notify(client, tenant, template="welcome", to=["newcomer"], channels=["email"])
    await run_workers(service_urls)
    [skipped] = await messages_of(client, tenant, again["id"])
    assert (skipped["status"], skipped["skip_reason"]) == ("skipped", "suppressed")


async def test_a_notification_waiting_for_dispatch_reaches_nobody_under_the_old_id(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    session: AsyncSession,
    service_urls: ServiceUrls,
    relay: tuple[Relay, int],
) -> None:
    box, port = relay
    await use_relay(client, tenant, port)
    accepted = await notify(client, tenant, template="welcome", to=[LEAVER], data={"note": NAME})
    await erase(client, tenant, LEAVER)
    # The id is free again; the notification was meant for the person erased, not for this one.
    await put_recipient(client, tenant, LEAVER, email="someone.else@example.com")
    await run_workers(service_urls)
    view = await notification(client, tenant, accepted["id"])
    assert view["messages"] == [] and box.waiting == []
    [erased_id] = view["problems"]["unknown_recipients"]
    assert erased_id.startswith("erased:")
    assert await rows_naming(session, tenant, NAME) == {}


async def test_an_erasure_waits_for_a_dispatch_under_way_without_deadlock(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    engine: AsyncEngine,
    relay: tuple[Relay, int],
) -> None:
    """Dispatch holds its notification's row, then reads the recipients (key-share locks,
    as its messages' foreign keys take): erasure must not hold the recipient meanwhile."""
    _, port = relay
    await use_relay(client, tenant, port)
    accepted = await notify(client, tenant, template="welcome", to=[LEAVER], data={"note": "n"})
    sessions = session_factory(engine)
    async with sessions() as dispatching:
        await dispatching.execute(
            text("SELECT 1 FROM notifications WHERE id = :id FOR UPDATE"), {"id": accepted["id"]}
        )
        erasing = asyncio.create_task(erase(client, tenant, LEAVER))
        await asyncio.sleep(0.3)  # the erasure is waiting for the notification's row
        assert not erasing.done()
        people = await recipients.get_by_external_ids(
            dispatching,
            tenant_id=tenant.tenant_id,
            mode=tenant.mode,
            external_ids=[LEAVER],
            for_delivery=True,
        )
        assert [p.email for p in people] == [ADDRESS]  # not blocked by the erasure
        await dispatching.commit()
    await asyncio.wait_for(erasing, 10)  # and the erasure went on, no deadlock


async def test_a_dispatch_during_an_erasure_waits_and_finds_nobody(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    engine: AsyncEngine,
    service_urls: ServiceUrls,
    relay: tuple[Relay, int],
) -> None:
    box, port = relay
    await use_relay(client, tenant, port)
    sessions = session_factory(engine)
    async with sessions() as erasing:
        # The erasure has run but not committed when the notification comes and is dispatched.
        await erase_recipient(
            erasing, tenant_id=tenant.tenant_id, mode=tenant.mode, external_id=LEAVER, actor="t"
        )
        accepted = await notify(client, tenant, template="welcome", to=[LEAVER], data={"note": "n"})
        async with sessions() as dispatching:
            dispatched = asyncio.create_task(
                dispatch(
                    dispatching,
                    notification_id=uuid.UUID(accepted["id"]),
                    renderer=unmetered_renderer(),
                )
            )
            await asyncio.sleep(0.3)
            assert not dispatched.done()  # waiting for the erasure's lock on the recipient
            await erasing.commit()
            assert (await asyncio.wait_for(dispatched, 10)).batches == []
            await dispatching.commit()
    await run_workers(service_urls)
    view = await notification(client, tenant, accepted["id"])
    assert view["messages"] == [] and box.waiting == []
    assert view["problems"]["unknown_recipients"] == [LEAVER]
