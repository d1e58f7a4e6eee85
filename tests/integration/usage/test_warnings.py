"""Quota warnings: after a usage flush, a tenant's owners with a verified address are mailed
once when a channel group reaches 80 % and once at 100 % of its plan's quota (a real SMTP
server, aiosmtpd), and every full dashboard page shows a banner while it is there.

Counts reach PostgreSQL the way dispatch's do: recorded in Redis by the meter, then moved by
the `flush_usage` cron job, which runs the check after the flush."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from email import message_from_bytes, policy
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from argon2 import PasswordHasher
from litestar import Litestar
from redis.asyncio import Redis
from sqlalchemy import text, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.auth.mailer import SystemMailer
from app.auth.models import Membership, User
from app.db import session_factory, utcnow
from app.runtime import ServiceUrls
from app.settings import Settings
from app.tenants import plans
from app.tenants.models import Tenant
from app.usage import service, warnings
from app.usage.meter import Count, Meter, period_of, period_start
from jobs import cron, functions, queues
from tests.dashboard import PASSWORD, browser, sign_in, unique_email
from tests.fakes import Mailbox
from tests.integration.dashboard.as_member import post
from tests.send_path import put_recipient, put_template, workers
from tests.support import TenantKey, free_port, key_of, make_tenant, plans_with, settings_for

MAIL_FROM = "Herald <accounts@herald.test>"
PUBLIC_URL = "http://herald.test"

# Small quotas, so that a test reaches them with a handful of counts.
WARNING_PLANS = """
[plans.warn-block]
api_rate = 1000
api_burst = 1000
send_rate = 1000
send_burst = 1000
render_ms_rate = 1000
render_ms_burst = 20000
log_retention_days = 7
overage = "block"

[plans.warn-block.quota]
email = 20
inbox = 5

[plans.warn-bill]
api_rate = 1000
api_burst = 1000
send_rate = 1000
send_burst = 1000
render_ms_rate = 1000
render_ms_burst = 20000
log_retention_days = 7
overage = "bill"
price_per_1000 = "2.50"

[plans.warn-bill.quota]
email = 20

[plans.warn-big]
api_rate = 1000
api_burst = 1000
send_rate = 1000
send_burst = 1000
render_ms_rate = 1000
render_ms_burst = 20000
log_retention_days = 7
overage = "block"

[plans.warn-big.quota]
email = 1000
"""


@pytest.fixture(scope="module", autouse=True)
def warning_plans(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with plans_with(tmp_path_factory.mktemp("plans"), WARNING_PLANS):
        yield


@pytest.fixture
async def meter(service_urls: ServiceUrls) -> AsyncIterator[Meter]:
    redis = Redis.from_url(service_urls.redis_url)
    yield Meter(redis)
    await redis.aclose()


def mailing_settings(service_urls: ServiceUrls, smtp_port: int) -> Settings:
    return settings_for(
        service_urls.database_url,
        service_urls.redis_url,
        HERALD_SMTP_URL=f"smtp://127.0.0.1:{smtp_port}",
        HERALD_MAIL_FROM=MAIL_FROM,
        HERALD_PUBLIC_URL=PUBLIC_URL,
    )


def job_context(
    engine: AsyncEngine, meter: Meter, service_urls: ServiceUrls, smtp_port: int
) -> dict[str, Any]:
    """What the cron job reads of a worker's context (jobs/worker.py), mailing to a port."""
    settings = mailing_settings(service_urls, smtp_port)
    return {
        "sessions": session_factory(engine),
        "meter": meter,
        "settings": settings,
        "mailer": SystemMailer(settings.smtp_url, settings.mail_from),
    }


@pytest.fixture
def ctx(
    engine: AsyncEngine, meter: Meter, service_urls: ServiceUrls, mailbox: tuple[Mailbox, int]
) -> dict[str, Any]:
    return job_context(engine, meter, service_urls, mailbox[1])


async def on_plan(session: AsyncSession, plan: str, mode: str = "live") -> TenantKey:
    tenant = await make_tenant(session, f"Warned {uuid.uuid4().hex[:6]}", mode=mode)
    await set_plan(session, tenant, plan)
    return tenant


async def set_plan(session: AsyncSession, tenant: TenantKey, plan: str) -> None:
    await session.execute(update(Tenant).where(Tenant.id == tenant.tenant_id).values(plan=plan))
    await session.commit()


async def person(
    session: AsyncSession, tenant: TenantKey, role: str, *, verified: bool = True
) -> str:
    """A member of `role`; their address (password PASSWORD)."""
    email = unique_email(role)
    user = User(
        email=email,
        name=f"{role.title()} Example",
        password_hash=PasswordHasher().hash(PASSWORD),
        email_verified_at=utcnow() if verified else None,
    )
    session.add(user)
    await session.flush()
    session.add(Membership(user_id=user.id, tenant_id=tenant.tenant_id, role=role))
    await session.commit()
    return email


async def count(meter: Meter, tenant: TenantKey, n: int, channel: str = "email") -> None:
    """`n` live messages queued this month, as dispatch records them."""
    await meter.record([Count(tenant.tenant_id, period_of(utcnow()), channel, n)])


def mails_to(box: Mailbox, to: str) -> list[tuple[str, str]]:
    """(subject, text) of every mail `to` received, oldest first."""
    found = []
    for envelope in box.received:
        if to in envelope.rcpt_tos:
            mail = message_from_bytes(envelope.original_content or b"", policy=policy.default)
            assert mail["From"] == MAIL_FROM
            body = mail.get_body(("plain",))
            assert body is not None
            found.append((str(mail["Subject"]), body.get_content()))
    return found


async def recorded(engine: AsyncEngine, tenant: TenantKey) -> dict[int, bool]:
    """The tenant's warnings this month: threshold -> mailed."""
    async with session_factory(engine)() as session:
        rows = await session.execute(
            text(
                "SELECT threshold, mailed_at IS NOT NULL FROM usage_warnings"
                " WHERE tenant_id = :tenant AND period = :period"
            ),
            {"tenant": tenant.tenant_id, "period": period_start(period_of(utcnow()))},
        )
        return {int(threshold): bool(mailed) for threshold, mailed in rows.all()}


async def test_80_percent_mails_each_verified_owner_once_then_100_percent_once_more(
    session: AsyncSession,
    engine: AsyncEngine,
    meter: Meter,
    ctx: dict[str, Any],
    mailbox: tuple[Mailbox, int],
) -> None:
    box, _ = mailbox
    tenant = await on_plan(session, "warn-block")
    owners = [await person(session, tenant, "owner") for _ in range(2)]
    unverified = await person(session, tenant, "owner", verified=False)
    others = [await person(session, tenant, role) for role in ("admin", "developer", "viewer")]

    await count(meter, tenant, 15)  # 75 %: nothing yet
    await cron.flush_usage(ctx)
    assert await recorded(engine, tenant) == {}
    await count(meter, tenant, 1)  # 80 %
    await cron.flush_usage(ctx)
    for owner in owners:
        [(subject, body)] = mails_to(box, owner)
        assert "80 % of its e-mail quota" in subject
        assert "has sent 16 of the 20 e-mail messages its warn-block plan includes" in body
        assert "refused (HTTP 429, quota_exceeded)" in body
        assert f"{PUBLIC_URL}/billing" in body
    for nobody in (unverified, *others):
        assert mails_to(box, nobody) == []
    assert await recorded(engine, tenant) == {80: True}

    await count(meter, tenant, 1)  # 85 %: told already
    await cron.flush_usage(ctx)
    assert [len(mails_to(box, owner)) for owner in owners] == [1, 1]

    await count(meter, tenant, 3)  # 100 %
    await cron.flush_usage(ctx)
    for owner in owners:
        assert len(mails_to(box, owner)) == 2
        subject, body = mails_to(box, owner)[-1]
        assert "used all of its e-mail quota" in subject
        assert "has sent 20 of the 20" in body
        assert "Further e-mail messages are refused (HTTP 429, quota_exceeded)" in body
    await count(meter, tenant, 4)  # past it: nothing more this month
    await cron.flush_usage(ctx)
    assert [len(mails_to(box, owner)) for owner in owners] == [2, 2]
    assert await recorded(engine, tenant) == {80: True, 100: True}
    for nobody in (unverified, *others):
        assert mails_to(box, nobody) == []


async def test_a_tenant_name_with_line_breaks_is_mailed_on_one_line(
    session: AsyncSession,
    meter: Meter,
    ctx: dict[str, Any],
    mailbox: tuple[Mailbox, int],
) -> None:
    """A tenant's name is its own to choose: a line break in it neither breaks the warning
    mail (nor anyone else's) nor adds a header."""
    box, _ = mailbox
    tenant = await on_plan(session, "warn-block")
    await session.execute(
        update(Tenant)
        .where(Tenant.id == tenant.tenant_id)
        .values(name="Acme\r\nBcc: someone@example.com")
    )
    await session.commit()
    owner = await person(session, tenant, "owner")
    other = await on_plan(session, "warn-block")
    other_owner = await person(session, other, "owner")
    await count(meter, tenant, 16)
    await count(meter, other, 16)
    await cron.flush_usage(ctx)
    [(subject, _)] = mails_to(box, owner)
    assert "Acme Bcc: someone@example.com has used 80 %" in subject
    assert len(mails_to(box, other_owner)) == 1
    assert mails_to(box, "someone@example.com") == []


async def test_70_to_100_percent_in_one_flush_is_one_mail_about_100(
    session: AsyncSession,
    engine: AsyncEngine,
    meter: Meter,
    ctx: dict[str, Any],
    mailbox: tuple[Mailbox, int],
) -> None:
    box, _ = mailbox
    tenant = await on_plan(session, "warn-bill")
    owner = await person(session, tenant, "owner")
    await count(meter, tenant, 14)  # 70 %
    await cron.flush_usage(ctx)
    await count(meter, tenant, 6)  # 100 %, past 80 % on the way
    await cron.flush_usage(ctx)
    [(subject, body)] = mails_to(box, owner)
    assert "used all of its e-mail quota" in subject
    assert "billed as overage, at 2.50 per 1,000" in body
    assert await recorded(engine, tenant) == {80: True, 100: True}


async def test_groups_without_a_quota_never_warn(
    session: AsyncSession,
    engine: AsyncEngine,
    meter: Meter,
    ctx: dict[str, Any],
    mailbox: tuple[Mailbox, int],
) -> None:
    box, _ = mailbox
    tenant = await on_plan(session, "warn-block")  # no SMS quota
    owner = await person(session, tenant, "owner")
    await count(meter, tenant, 10_000, channel="sms")
    await cron.flush_usage(ctx)
    assert mails_to(box, owner) == []
    assert await recorded(engine, tenant) == {}


async def test_a_failed_send_is_retried_by_the_next_run_and_sent_once(
    session: AsyncSession,
    engine: AsyncEngine,
    meter: Meter,
    service_urls: ServiceUrls,
    ctx: dict[str, Any],
    mailbox: tuple[Mailbox, int],
) -> None:
    box, _ = mailbox
    tenant = await on_plan(session, "warn-block")
    owner = await person(session, tenant, "owner")
    down = job_context(engine, meter, service_urls, free_port())  # nothing listens there
    await count(meter, tenant, 17)
    await cron.flush_usage(down)
    assert await recorded(engine, tenant) == {80: False}  # recorded, not mailed
    await cron.flush_usage(down)  # still down: still waiting
    assert await recorded(engine, tenant) == {80: False}
    assert mails_to(box, owner) == []

    await cron.flush_usage(ctx)  # no new counts: the waiting mail goes all the same
    assert len(mails_to(box, owner)) == 1
    assert await recorded(engine, tenant) == {80: True}
    await cron.flush_usage(ctx)
    assert len(mails_to(box, owner)) == 1


class SlowMailbox(Mailbox):
    """A server that takes its time over each message: concurrent runs overlap in the send."""

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        await asyncio.sleep(0.3)
        return await super().handle_DATA(server, session, envelope)


@pytest.fixture
def slow_mailbox() -> Iterator[tuple[Mailbox, int]]:
    box, port = SlowMailbox(), free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    yield box, port
    controller.stop()


async def test_concurrent_checks_mail_once(
    session: AsyncSession,
    engine: AsyncEngine,
    meter: Meter,
    service_urls: ServiceUrls,
    slow_mailbox: tuple[Mailbox, int],
) -> None:
    """Runs judging the same counts at once (a slow tick and the next ones) record each
    threshold once and send its mail once, however long the send takes."""
    box, port = slow_mailbox
    ctx = job_context(engine, meter, service_urls, port)
    tenant = await on_plan(session, "warn-block")
    owner = await person(session, tenant, "owner")
    await count(meter, tenant, 20)
    touched: service.Touched = set()
    await service.flush(ctx["sessions"], meter, touched)
    assert (tenant.tenant_id, period_of(utcnow()), "email") in touched
    runs = [
        warnings.check(ctx["sessions"], ctx["mailer"], touched, public_url=PUBLIC_URL)
        for _ in range(4)
    ]
    results = await asyncio.gather(*runs)
    assert sum(r.recorded for r in results) == 2  # 80 % and 100 %, once each
    assert [subject for subject, _ in mails_to(box, owner)] == [
        f"{await name_of(session, tenant)} has used all of its e-mail quota this month"
    ]
    assert await recorded(engine, tenant) == {80: True, 100: True}


async def name_of(session: AsyncSession, tenant: TenantKey) -> str:
    found = await session.get(Tenant, tenant.tenant_id)
    assert found is not None
    return found.name


async def test_a_plan_change_is_judged_against_the_new_quota(
    session: AsyncSession,
    engine: AsyncEngine,
    meter: Meter,
    ctx: dict[str, Any],
    mailbox: tuple[Mailbox, int],
) -> None:
    """An upgrade: what was 85 % is 1.7 %, no mail. Then billed past 100 % and moved down
    to a blocking plan: the owners are told again that sends are now refused."""
    box, _ = mailbox
    tenant = await on_plan(session, "warn-big")
    owner = await person(session, tenant, "owner")
    await count(meter, tenant, 17)  # 1.7 % of warn-big
    await cron.flush_usage(ctx)
    assert mails_to(box, owner) == []

    await set_plan(session, tenant, "warn-bill")
    await count(meter, tenant, 3)  # 100 % of warn-bill
    await cron.flush_usage(ctx)
    [(_, billed)] = mails_to(box, owner)
    assert "billed as overage" in billed
    await set_plan(session, tenant, "warn-block")  # same quota: nothing new to say
    await count(meter, tenant, 1)
    await cron.flush_usage(ctx)
    assert len(mails_to(box, owner)) == 1

    await set_plan(session, tenant, "free")
    await set_free_email_quota_reached(meter, tenant)
    await cron.flush_usage(ctx)
    assert len(mails_to(box, owner)) == 2
    _, refused = mails_to(box, owner)[-1]
    assert "Further e-mail messages are refused" in refused


async def set_free_email_quota_reached(meter: Meter, tenant: TenantKey) -> None:
    quota = plans.plan("free").quota_for("email")
    assert quota is not None and quota > 21
    await count(meter, tenant, quota - 21)


async def test_test_mode_never_warns_and_live_mode_does(
    client: httpx.AsyncClient,
    session: AsyncSession,
    engine: AsyncEngine,
    service_urls: ServiceUrls,
    mailbox: tuple[Mailbox, int],
) -> None:
    """Through the API, the real dispatch job and the worker's own context: five inbox
    messages are a warn-block tenant's whole inbox quota, which test mode never touches."""
    box, port = mailbox
    tenant = await on_plan(session, "warn-block")
    owner = await person(session, tenant, "owner")
    test_key = await key_of(session, tenant, "test")
    async with workers(mailing_settings(service_urls, port)) as worker:
        worker["redis"] = await queues.connect(service_urls.redis_url)
        try:
            for key in (test_key, tenant):  # test mode first, then live
                await put_template(client, key, "hi", {"inbox": {"title": "Hi", "body": "Hey"}})
                people = [f"p{i}" for i in range(5)]
                for external_id in people:
                    await put_recipient(client, key, external_id)
                body = {"template": "hi", "to": people, "channels": ["inbox"]}
                accepted = await client.post("/v1/notifications", headers=key.headers, json=body)
                assert accepted.status_code == 202, accepted.text
                await functions.dispatch(worker, accepted.json()["id"])
                await cron.flush_usage(worker)
                if key is test_key:
                    assert await recorded(engine, tenant) == {}
                    assert mails_to(box, owner) == []
        finally:
            await worker["redis"].aclose()
    [(subject, _)] = mails_to(box, owner)
    assert "all of its in-app inbox quota" in subject


def text_of(page: httpx.Response) -> str:
    """The page's words, tags left out."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page.text))


SignIn = Callable[[TenantKey, str], Awaitable[httpx.AsyncClient]]


@pytest.fixture
async def signed_in_as(app: Litestar, session: AsyncSession) -> AsyncIterator[SignIn]:
    """Browsers signed in as new members of a role, looking at live data."""
    async with AsyncExitStack() as stack:

        async def open_as(tenant: TenantKey, role: str) -> httpx.AsyncClient:
            email = await person(session, tenant, role)
            client = await stack.enter_async_context(browser(app))
            assert (await sign_in(client, email, PASSWORD)).status_code == 303
            await post(client, "/mode", {"mode": "live"})
            return client

        yield open_as


async def test_the_banner_shows_on_every_page_for_owners_with_a_link_to_billing(
    session: AsyncSession, meter: Meter, ctx: dict[str, Any], signed_in_as: SignIn
) -> None:
    tenant = await on_plan(session, "warn-block")
    owner = await signed_in_as(tenant, "owner")
    assert 'id="quota-banner"' not in (await owner.get("/overview")).text
    await count(meter, tenant, 17)
    await cron.flush_usage(ctx)
    for path in ("/overview", "/messages", "/keys"):
        page = await owner.get(path)
        assert page.status_code == 200, path
        words = text_of(page)
        assert 'id="quota-banner"' in page.text, path
        assert "This month, 80 % of the e-mail quota is used: 17 of 20 live messages" in words
        assert "refused (429 quota_exceeded)" in words
        assert 'href="/billing"' in page.text
    await count(meter, tenant, 3)
    await cron.flush_usage(ctx)
    words = text_of(await owner.get("/overview"))
    assert "100 % of the e-mail quota is used: 20 of 20" in words
    assert "Further ones are refused (429 quota_exceeded) until the quota resets on" in words


async def test_the_banner_by_role(
    session: AsyncSession, meter: Meter, ctx: dict[str, Any], signed_in_as: SignIn
) -> None:
    """Admins and developers see it, told an owner can change the plan (the billing page is
    an owner's); viewers, who can act on none of it, do not."""
    tenant = await on_plan(session, "warn-bill")
    await count(meter, tenant, 16)
    await cron.flush_usage(ctx)
    for role in ("admin", "developer"):
        page = await (await signed_in_as(tenant, role)).get("/overview")
        assert 'id="quota-banner"' in page.text, role
        assert "Past the quota, messages are billed as overage" in text_of(page)
        assert 'href="/billing"' not in page.text
        assert "can change the plan" in text_of(page)
    viewer = await (await signed_in_as(tenant, "viewer")).get("/overview")
    assert viewer.status_code == 200
    assert 'id="quota-banner"' not in viewer.text


async def test_the_banner_shows_only_the_signed_in_tenants_usage(
    session: AsyncSession, meter: Meter, ctx: dict[str, Any], signed_in_as: SignIn
) -> None:
    crowded = await on_plan(session, "warn-block")
    quiet = await on_plan(session, "warn-block")
    await count(meter, crowded, 20)
    await count(meter, quiet, 1)
    await cron.flush_usage(ctx)
    quiet_page = await (await signed_in_as(quiet, "owner")).get("/overview")
    assert quiet_page.status_code == 200
    assert 'id="quota-banner"' not in quiet_page.text
    crowded_page = await (await signed_in_as(crowded, "owner")).get("/overview")
    assert "20 of 20 live messages" in text_of(crowded_page)


async def test_an_upgrade_below_80_percent_takes_the_banner_away(
    session: AsyncSession, meter: Meter, ctx: dict[str, Any], signed_in_as: SignIn
) -> None:
    tenant = await on_plan(session, "warn-block")
    owner = await signed_in_as(tenant, "owner")
    await count(meter, tenant, 19)
    await cron.flush_usage(ctx)
    assert 'id="quota-banner"' in (await owner.get("/overview")).text
    await set_plan(session, tenant, "warn-big")
    assert 'id="quota-banner"' not in (await owner.get("/overview")).text
