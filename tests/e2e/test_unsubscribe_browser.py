"""A recipient's unsubscribe link in a real browser: a real `herald api` process driven by
headless Chromium, with no cookie and no JavaScript of ours.

Opens the link's page, clicks Unsubscribe, sees the confirmation, and finds the category's
e-mail switched off in PostgreSQL; then uses the preference centre and finds its switches
saved. Any console error (a Content-Security-Policy violation among them) fails the test.
Leaves a screenshot in test-artifacts/unsubscribe-preferences.png.
"""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import ConsoleMessage, async_playwright, expect
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.crypto import Keyring
from app.recipients.models import Preference, Recipient
from app.runtime import ServiceUrls
from app.unsubscribe.tokens import TokenClaims, UnsubscribeTokens
from tests.e2e.browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, require_chromium
from tests.support import TenantKey, herald_api, make_tenant

KEY = os.urandom(32)  # the server's encryption key, so that the test can make its links


@pytest.fixture
def server(service_urls: ServiceUrls, tmp_path: Path) -> Iterator[str]:
    encoded = base64.urlsafe_b64encode(KEY).decode()
    with herald_api(
        service_urls.database_url,
        service_urls.redis_url,
        tmp_path,
        HERALD_ENCRYPTION_KEYS=f"e2e:{encoded}",
    ) as api:
        yield api.url


async def switches(session: AsyncSession, recipient: uuid.UUID) -> dict[tuple[str, str], bool]:
    session.expire_all()
    rows = await session.execute(
        select(Preference.category, Preference.channel, Preference.enabled).where(
            Preference.recipient_id == recipient
        )
    )
    return {(category, channel): enabled for category, channel, enabled in rows}


async def a_recipient(server: str, session: AsyncSession) -> tuple[TenantKey, uuid.UUID]:
    tenant = await make_tenant(session, "Acme Newsletters")
    async with httpx.AsyncClient(base_url=server, headers=tenant.headers) as api:
        put = await api.put("/v1/recipients/reader-1", json={"email": "reader@example.com"})
        assert put.status_code == 201, put.text
    found = await session.scalar(
        select(Recipient.id).where(
            Recipient.tenant_id == tenant.tenant_id, Recipient.external_id == "reader-1"
        )
    )
    assert found is not None
    return tenant, found


async def test_unsubscribe_and_preferences_in_a_browser(server: str, session: AsyncSession) -> None:
    require_chromium()
    ARTIFACTS.mkdir(exist_ok=True)
    tenant, reader = await a_recipient(server, session)
    tokens = UnsubscribeTokens(Keyring([("e2e", KEY)]))
    token = tokens.make(TokenClaims(tenant.tenant_id, tenant.mode, reader, "marketing"))
    problems: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            problems.append(f"console: {message.text}")

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        try:
            # No JavaScript at all: the pages are plain forms.
            context = await browser.new_context(
                viewport={"width": 900, "height": 900}, java_script_enabled=False
            )
            page = await context.new_page()
            page.on("console", on_console)

            await page.goto(f"{server}/u/{token}")
            await expect(page.locator("h1")).to_have_text("Unsubscribe")
            await expect(page.locator(".lead")).to_contain_text("“Marketing” e-mail")
            assert await switches(session, reader) == {}, "opening the page changes nothing"

            await page.get_by_role("button", name="Unsubscribe").click()
            await expect(page.locator("h1")).to_have_text("You are unsubscribed")
            assert page.url == f"{server}/u/{token}", "answered in place, not redirected"
            assert await switches(session, reader) == {("marketing", "email"): False}
            assert await context.cookies() == [], "no cookie was set"

            await page.get_by_role("link", name="Choose what you get instead").click()
            await expect(page.locator("h1")).to_have_text("Your preferences")
            marketing_email = page.get_by_label("Marketing by E-mail")
            await expect(marketing_email).not_to_be_checked()
            await expect(page.get_by_label("Security by E-mail")).to_have_count(0)
            await page.get_by_label("Transactional by SMS").uncheck()
            await marketing_email.check()
            await page.get_by_label("Marketing by Push").uncheck()
            await page.get_by_role("button", name="Save preferences").click()

            await expect(page.locator("[role=status]")).to_have_text("Your preferences are saved.")
            await expect(page.get_by_label("Transactional by SMS")).not_to_be_checked()
            await expect(page.get_by_label("Marketing by E-mail")).to_be_checked()
            await expect(page.get_by_label("Marketing by Push")).not_to_be_checked()
            assert await switches(session, reader) == {
                ("marketing", "email"): True,
                ("marketing", "push"): False,
                ("transactional", "sms"): False,
            }
            await page.screenshot(path=ARTIFACTS / "unsubscribe-preferences.png", full_page=True)

            forged = token[:10] + ("A" if token[10] != "A" else "B") + token[11:]
            await page.goto(f"{server}/u/{forged}")
            await expect(page.locator("h1")).to_have_text("Link not found")
        finally:
            await browser.close()
    # The 404 page is a console error of its own (a failed load): nothing else may be.
    assert [p for p in problems if "404" not in p] == [], problems
