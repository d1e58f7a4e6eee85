"""Sign-up mails a verification link (real SMTP, to aiosmtpd); until an owner follows it, the
tenant's live keys neither authenticate nor can be made, while test keys work.

The rule is the service's: a live key issued for the tenant by any path is refused by
authentication itself, not only by the dashboard's form.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from email import message_from_bytes, policy
from pathlib import Path

import httpx
import pytest
from litestar import Litestar
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth import accounts, keys, verification
from app.auth.models import EmailVerification, User
from app.db import utcnow
from app.main import create_app
from app.runtime import ServiceUrls
from app.seed import create_tenant_with_key, seed_demo
from tests.dashboard import browser, create_key, csrf_token, htmx_headers, sign_up, unique_email
from tests.fakes import Mailbox
from tests.support import serving, settings_for

LINK = re.compile(r"http://\S+/verify-email\?token=\S+")


@pytest.fixture
async def mailing_app(
    service_urls: ServiceUrls, mailbox: tuple[Mailbox, int]
) -> AsyncIterator[Litestar]:
    """The app with HERALD_SMTP_URL pointing at the test's SMTP server."""
    _, port = mailbox
    settings = settings_for(
        service_urls.database_url,
        service_urls.redis_url,
        HERALD_SMTP_URL=f"smtp://127.0.0.1:{port}",
        HERALD_MAIL_FROM="Herald <accounts@herald.test>",
        HERALD_PUBLIC_URL="http://herald.test",
    )
    async with serving(create_app(settings)) as app:
        yield app


def links_in(box: Mailbox, to: str) -> list[str]:
    """The verification links of the mails `to` received, oldest first, decoded as a mail
    reader decodes them."""
    links = []
    for envelope in box.received:
        if to not in envelope.rcpt_tos:
            continue
        raw = envelope.original_content or b""
        mail = message_from_bytes(raw, policy=policy.default)
        assert mail["From"] == "Herald <accounts@herald.test>"
        assert mail["To"] == to
        body = mail.get_body(("plain",))
        assert body is not None
        found = LINK.search(body.get_content())
        assert found, body.get_content()
        links.append(found.group(0))
    return links


def link_in(box: Mailbox, to: str) -> str:
    links = links_in(box, to)
    assert len(links) == 1, f"one mail to {to}"
    return links[0]


async def tenant_of(session: AsyncSession, user_id: uuid.UUID) -> uuid.UUID:
    return (await accounts.tenants_of(session, user_id=user_id))[0].tenant.id


async def confirm(client: httpx.AsyncClient, link: str) -> httpx.Response:
    """Open the link (a page with a button), then press the button."""
    page = await client.get(link.removeprefix("http://herald.test"))
    assert page.status_code == 200 and "Confirm my e-mail address" in page.text
    token = re.search(r'name="token" value="([^"]+)"', page.text)
    assert token
    return await client.post(
        "/verify-email", data={"token": token.group(1), "_csrf_token": await csrf_token(client)}
    )


async def test_live_keys_wait_for_the_owner_to_follow_the_link(
    mailing_app: Litestar, mailbox: tuple[Mailbox, int], session: AsyncSession
) -> None:
    box, _ = mailbox
    email = unique_email("founder")
    async with browser(mailing_app) as owner:
        assert (await sign_up(owner, email, company="Fresh Start")).status_code == 303
        link = link_in(box, email)
        keys_page = await owner.get("/keys")
        assert "Confirm your e-mail address to create live keys" in keys_page.text

        token = await csrf_token(owner)
        form = {"name": "too soon", "mode": "live", "scopes": ["send"]}
        refused = await owner.post("/keys", data=form, headers=htmx_headers(token))
        assert refused.status_code == 422
        assert verification.LIVE_KEYS_NEED_VERIFICATION in refused.text
        test_key = await create_key(owner, "sandbox", mode="test")

        user = await session.scalar(select(User).where(User.email == email))
        assert user is not None and user.email_verified_at is None
        tenant_id = await tenant_of(session, user.id)
        # A live key made behind the form's back (any other path) still cannot be used.
        issued = await keys.issue_key(
            session, tenant_id=tenant_id, name="sneaky", mode="live", scopes=["send"], actor="t"
        )
        await session.commit()
        live = {"Authorization": f"Bearer {issued.secret}"}
        answer = await owner.get("/v1/tenant", headers=live)
        assert answer.status_code == 401
        assert "verified their e-mail" in answer.json()["detail"]
        send = await owner.post("/v1/notifications", headers=live, json={"template": "x"})
        assert send.status_code == 401
        sandbox = {"Authorization": f"Bearer {test_key.secret}"}
        assert (await owner.get("/v1/tenant", headers=sandbox)).status_code == 200
        promote = await owner.post(
            "/v1/api-keys", headers=sandbox, json={"name": "x", "mode": "live", "scopes": ["send"]}
        )
        assert promote.status_code in (403, 422), "a test key cannot mint a live one"

        assert (await owner.get(link.removeprefix("http://herald.test"))).status_code == 200
        verified = await confirm(owner, link)
        assert verified.status_code == 200, verified.text
        assert f"<strong>{email}</strong> is confirmed" in verified.text

        await asyncio.sleep(mailing_app.state.key_cache.ttl + 0.05)
        assert (await owner.get("/v1/tenant", headers=live)).status_code == 200
        assert (await create_key(owner, "production", mode="live")).response.status_code == 201
        assert "Confirm your e-mail address" not in (await owner.get("/keys")).text

        again = await confirm(owner, link)
        assert again.status_code == 400 and "This link does not work" in again.text


async def test_an_expired_or_unknown_link_verifies_nothing(
    mailing_app: Litestar, mailbox: tuple[Mailbox, int], session: AsyncSession
) -> None:
    box, _ = mailbox
    email = unique_email("late")
    async with browser(mailing_app) as owner:
        await sign_up(owner, email)
        link = link_in(box, email)
        digest = verification._digest(link.rpartition("=")[2])
        row = await session.get(EmailVerification, digest)
        assert row is not None
        row.expires_at = utcnow() - timedelta(seconds=1)
        await session.commit()
        assert (await confirm(owner, link)).status_code == 400
        forged = link.rpartition("=")[0] + "=" + "A" * 43
        assert (await confirm(owner, forged)).status_code == 400
        user = await session.scalar(select(User).where(User.email == email))
        assert user is not None
        tenant_id = await tenant_of(session, user.id)
        assert not await verification.live_keys_allowed(session, tenant_id=tenant_id)


async def test_resending_mails_a_new_link_within_limits(
    mailing_app: Litestar, mailbox: tuple[Mailbox, int]
) -> None:
    box, _ = mailbox
    email = unique_email("again")
    async with browser(mailing_app) as owner:
        await sign_up(owner, email)
        token = await csrf_token(owner, "/account")
        sent = await owner.post("/account/verification", data={"_csrf_token": token})
        assert sent.status_code == 303 and sent.headers["location"] == "/account?notice=sent"
        links = links_in(box, email)
        assert len(links) == 2
        answers = []
        for _ in range(5):
            token = await csrf_token(owner, "/account")
            answers.append(
                (await owner.post("/account/verification", data={"_csrf_token": token})).status_code
            )
        assert answers[-1] == 429, answers
        assert (await confirm(owner, links[0])).status_code == 200, "an older link works too"
        token = await csrf_token(owner, "/account")
        done = await owner.post("/account/verification", data={"_csrf_token": token})
        assert done.status_code == 409 and "verified already" in done.text


async def test_operator_tenants_are_verified(
    service_urls: ServiceUrls, client: httpx.AsyncClient, session: AsyncSession, tmp_path: Path
) -> None:
    tenant_id, secret = await create_tenant_with_key(service_urls.database_url, "Ops", "live")
    answer = await client.get("/v1/tenant", headers={"Authorization": f"Bearer {secret}"})
    assert answer.status_code == 200
    assert await verification.live_keys_allowed(session, tenant_id=tenant_id)

    demo = await seed_demo(service_urls.database_url, tmp_path)
    owner = await session.scalar(select(User).where(User.email == demo["email"]))
    assert owner is not None and owner.email_verified_at is not None
    demo_tenant = await tenant_of(session, owner.id)
    assert await verification.live_keys_allowed(session, tenant_id=demo_tenant)
