"""The overview page, driven over HTTP as a browser does: a new tenant's empty state (the
commands shown do send a notification, and no secret is printed), the figures of messages
sent through the send path, the home redirect, bad input, and isolation between tenants
and modes."""

from __future__ import annotations

import html
import re
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from argon2 import PasswordHasher
from litestar import Litestar
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from admin_ui.overview import FIRST_NOTIFICATION, FIRST_TEMPLATE
from app.auth.models import Membership, User
from app.delivery.service import Deliverer
from app.notifications.dispatch import dispatch
from app.notifications.models import Message
from app.runtime import ServiceUrls
from tests.dashboard import (
    PASSWORD,
    SECRET,
    browser,
    create_key,
    csrf_token,
    post_form,
    sign_in,
    sign_up,
    unique_email,
)
from tests.send_path import notify, put_recipient, put_template, workers
from tests.support import TenantKey, key_of, settings_for, unmetered_renderer

RECIPIENTS = {"ok": "ok@example.com", "bad": "fail@sandbox.herald"}


@pytest.fixture
async def deliverer(service_urls: ServiceUrls) -> AsyncIterator[Deliverer]:
    settings = settings_for(service_urls.database_url, service_urls.redis_url)
    async with workers(settings) as ctx:
        yield ctx["deliverer"]


async def add_member(session: AsyncSession, tenant_id: uuid.UUID, role: str) -> str:
    email = unique_email(role)
    user = User(
        email=email, name=f"{role.title()} Example", password_hash=PasswordHasher().hash(PASSWORD)
    )
    session.add(user)
    await session.flush()
    session.add(Membership(user_id=user.id, tenant_id=tenant_id, role=role))
    await session.commit()
    return email


async def show_mode(client: httpx.AsyncClient, mode: str) -> None:
    switched = await post_form(client, "/mode", {"mode": mode})
    assert switched.status_code == 303, switched.text


async def send_and_deliver(
    client: httpx.AsyncClient, session: AsyncSession, key: TenantKey, deliverer: Deliverer
) -> None:
    """A notification of the key's mode to two recipients, dispatched and delivered by the
    sandbox: one sent, one refused for good (to the DLQ)."""
    await put_template(client, key, "hello", {"email": {"subject": "Hi", "text": "Hello"}})
    for external_id, email in RECIPIENTS.items():
        await put_recipient(client, key, external_id, email=email)
    accepted = await notify(client, key, template="hello", to=list(RECIPIENTS))
    notification_id = uuid.UUID(accepted["id"])
    await dispatch(session, notification_id=notification_id, renderer=unmetered_renderer())
    await session.commit()
    ids = list(
        await session.scalars(select(Message.id).where(Message.notification_id == notification_id))
    )
    await session.commit()
    await deliverer.deliver(ids)


def text_of(page: httpx.Response, element_id: str) -> str:
    """The text inside the element with this id (tags removed, spaces collapsed)."""
    found = re.search(rf'<(\w+)[^>]*\bid="{element_id}"[^>]*>(.*?)</\1>', page.text, re.S)
    assert found, f"#{element_id} on the page"
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", found.group(2))).split())


async def test_a_new_tenant_lands_on_an_empty_overview_that_says_how_to_send(
    app: Litestar, client: httpx.AsyncClient
) -> None:
    async with browser(app) as owner:
        signed_up = await sign_up(owner, unique_email())
        assert signed_up.headers["location"] == "/overview"
        assert (await owner.get("/")).headers["location"] == "/overview"
        page = await owner.get("/overview")
        assert page.status_code == 200
        assert 'id="first-send"' in page.text
        assert 'href="/keys"' in page.text
        command = html.unescape(
            re.search(r'id="first-send-command"><code>(.*?)</code>', page.text, re.S).group(1)  # type: ignore[union-attr]
        )
        assert "/v1/notifications" in command and "/v1/templates/welcome" in command
        assert "hk_test_..." in command  # a new tenant sees its test data first
        assert not SECRET.search(page.text)

        # With a key, the commands' requests work as shown; the secret is still not printed.
        created = await create_key(owner, scopes=("send", "manage"))
        headers = {"Authorization": f"Bearer {created.secret}"}
        assert '"template": "welcome"' in command
        stored = await client.put("/v1/templates/welcome", headers=headers, json=FIRST_TEMPLATE)
        assert stored.status_code == 201, stored.text
        sent = await client.post("/v1/notifications", headers=headers, json=FIRST_NOTIFICATION)
        assert sent.status_code == 202, sent.text
        again = await owner.get("/overview")
        assert created.secret not in again.text and not SECRET.search(again.text)


async def test_the_overview_shows_the_figures_of_what_was_sent(
    app: Litestar,
    client: httpx.AsyncClient,
    session: AsyncSession,
    tenant: TenantKey,
    other_tenant: TenantKey,
    deliverer: Deliverer,
) -> None:
    test_key = await key_of(session, tenant, "test")
    await send_and_deliver(client, session, test_key, deliverer)
    email = await add_member(session, tenant.tenant_id, "viewer")
    other_email = await add_member(session, other_tenant.tenant_id, "owner")

    async with browser(app) as viewer:
        assert (await sign_in(viewer, email, PASSWORD)).status_code == 303
        await show_mode(viewer, "test")
        page = await viewer.get("/overview")
        assert page.status_code == 200
        assert 'id="first-send"' not in page.text
        assert text_of(page, "stat-accepted").startswith("Accepted 2 2 in 30 days")
        assert text_of(page, "stat-sent").startswith("Sent 1 1 in 30 days")
        assert text_of(page, "stat-failed").startswith("Failed 1 1 in 30 days")
        assert text_of(page, "stat-in-dlq").startswith("In DLQ now 1 1 dead-lettered")
        assert text_of(page, "stat-delivery-rate").startswith("Delivery rate 50% 50%")
        assert text_of(page, "queue-normal") == "0"
        assert text_of(page, "p50-today") != "—"
        row = text_of(page, "channel-email")
        assert row.startswith("E-mail 2 1 0 1 1 1 50%"), row
        # The chart: 30 days, today's bar with a sent and a dead-lettered segment.
        assert page.text.count('<g class="day">') == 30
        assert page.text.count('class="bar bar-sent"') == 1
        assert page.text.count('class="bar bar-dead-lettered"') == 1
        assert "style=" not in page.text  # the CSP allows no inline style

        today = await viewer.get("/overview?span=today")
        assert today.status_code == 200
        assert text_of(today, "channel-email").startswith("E-mail 2 1 0 1 1 1 50%")

        # The live data of the same tenant holds none of it.
        await show_mode(viewer, "live")
        live = await viewer.get("/overview")
        assert 'id="first-send"' in live.text and "hk_live_..." in live.text
        assert "as a viewer you can see the" in " ".join(live.text.split())

    # Nor does the other tenant's overview, in either mode.
    async with browser(app) as other:
        assert (await sign_in(other, other_email, PASSWORD)).status_code == 303
        for mode in ("test", "live"):
            await show_mode(other, mode)
            assert 'id="first-send"' in (await other.get("/overview")).text


@pytest.mark.parametrize("span", ["bogus", "x" * 200, "TODAY"])
async def test_a_bad_span_is_a_422_naming_it(app: Litestar, span: str) -> None:
    async with browser(app) as owner:
        await sign_up(owner, unique_email())
        page = await owner.get("/overview", params={"span": span})
        assert page.status_code == 422
        assert "span" in page.text


async def test_signed_out_the_overview_sends_to_sign_in(client: httpx.AsyncClient) -> None:
    answer = await client.get("/overview")
    assert answer.status_code == 303 and answer.headers["location"] == "/signin"
    assert await csrf_token(client)  # the sign-in page it leads to works
