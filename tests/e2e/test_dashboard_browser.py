"""The dashboard in a real browser: a real `herald api` process driven by headless Chromium.

Signs up, confirms the e-mail through the link mailed to a real SMTP server (aiosmtpd),
creates API keys (the secret shown once, with a working copy button), revokes one through
the confirm dialog, and leaves a screenshot in test-artifacts/dashboard-keys.png.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Iterator
from email import message_from_bytes, policy
from pathlib import Path

import httpx
import pytest
from playwright.async_api import ConsoleMessage, Dialog, Page, async_playwright, expect

from app.runtime import ServiceUrls
from tests.e2e.browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, PASSWORD, require_chromium
from tests.fakes import Mailbox
from tests.support import herald_api

SECRET = re.compile(r"^hk_(live|test)_[0-9A-Za-z]{32}$")


@pytest.fixture
def server(
    service_urls: ServiceUrls, tmp_path: Path, mailbox: tuple[Mailbox, int]
) -> Iterator[str]:
    """A `herald api` process against this run's test database, mailing through the test's
    SMTP server; its URL."""
    _, smtp_port = mailbox
    with herald_api(
        service_urls.database_url,
        service_urls.redis_url,
        tmp_path,
        HERALD_SMTP_URL=f"smtp://127.0.0.1:{smtp_port}",
    ) as api:
        yield api.url


def verification_link(box: Mailbox, to: str) -> str:
    """The link of the one verification mail sent to `to`, decoded as a mail reader does."""
    mails = [envelope for envelope in box.received if to in envelope.rcpt_tos]
    assert len(mails) == 1, f"one mail to {to}"
    mail = message_from_bytes(mails[0].original_content or b"", policy=policy.default)
    body = mail.get_body(("plain",))
    assert body is not None
    found = re.search(r"http://\S+/verify-email\?token=\S+", body.get_content())
    assert found, body.get_content()
    return found.group(0)


async def sign_up(page: Page, base_url: str, company: str) -> str:
    """Sign up, land on the overview (a new tenant's: how to send a first notification),
    and go to the keys page; the e-mail signed up with."""
    email = f"ada-{uuid.uuid4().hex[:8]}@acme.example"
    await page.goto(f"{base_url}/signup")
    await page.get_by_label("Company name").fill(company)
    await page.get_by_label("Your name").fill("Ada Example")
    await page.get_by_label("Work e-mail").fill(email)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Create account").click()
    await page.wait_for_url(f"{base_url}/overview")
    await expect(page.locator("#first-send")).to_be_visible()
    await page.goto(f"{base_url}/keys")
    return email


async def verify_email(page: Page, base_url: str, box: Mailbox, email: str) -> None:
    """Follow the mailed link and confirm, as the owner would."""
    await page.goto(verification_link(box, email))
    await page.get_by_role("button", name="Confirm my e-mail address").click()
    await expect(page.locator("h1")).to_have_text("E-mail verified")
    await page.goto(f"{base_url}/keys")


async def create_key(page: Page, name: str, mode: str, scopes: list[str]) -> str:
    """Fill and send the create form; returns the secret the page reveals."""
    form = page.locator("#key-create form")
    await form.get_by_label("Name").fill(name)
    await form.locator(f"input[name=mode][value={mode}]").check(force=True)
    for checkbox in await form.locator("input[name=scopes]").all():
        wanted = await checkbox.get_attribute("value") in scopes
        await checkbox.set_checked(wanted)
    await form.get_by_role("button", name="Create key").click()
    reveal = page.locator(".secret-reveal")
    await expect(reveal).to_contain_text(f"Key “{name}” created")
    secret = (await page.locator("#new-key-secret").inner_text()).strip()
    assert SECRET.match(secret), secret
    return secret


async def wait_for_api_status(base_url: str, secret: str, status: int) -> int:
    """The key cache may serve a revoked key for up to a second: poll a little longer."""
    async with httpx.AsyncClient(base_url=base_url) as api:
        deadline = time.monotonic() + 3
        while True:
            answer = await api.get("/v1/tenant", headers={"Authorization": f"Bearer {secret}"})
            if answer.status_code == status or time.monotonic() > deadline:
                return answer.status_code
            await asyncio.sleep(0.1)


async def test_dashboard_keys_in_a_browser(server: str, mailbox: tuple[Mailbox, int]) -> None:
    require_chromium()
    ARTIFACTS.mkdir(exist_ok=True)
    problems: list[str] = []
    dialogs: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            problems.append(f"console: {message.text}")

    async def on_dialog(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        await dialog.accept()

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        try:
            context = await browser.new_context(viewport={"width": 1280, "height": 860})
            await context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server)
            page = await context.new_page()
            page.on("console", on_console)
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            page.on("dialog", on_dialog)

            email = await sign_up(page, server, "Acme Rockets")
            await expect(page.locator(".account-tenant")).to_have_text("Acme Rockets")
            await expect(page.locator("#keys-body .empty-row")).to_be_visible()
            await expect(page.locator("#verify-notice")).to_contain_text(email)
            await verify_email(page, server, mailbox[0], email)
            await expect(page.locator("#verify-notice")).to_have_count(0)

            doomed = await create_key(page, "Legacy cron job", "live", ["send"])
            assert await wait_for_api_status(server, doomed, 200) == 200

            kept = await create_key(page, "Billing service", "test", ["send", "read"])
            assert kept != doomed
            assert doomed not in await page.content(), "each secret is shown once only"

            copy = page.get_by_role("button", name="Copy")
            await expect(copy).to_be_visible()
            await copy.click()
            await expect(page.locator(".copy-button")).to_have_text("Copied")
            assert await page.evaluate("navigator.clipboard.readText()") == kept

            rows = page.locator("#keys-body tr.key-row")
            await expect(rows).to_have_count(2)
            await expect(page.locator("#keys-body .empty-row")).to_be_hidden()
            doomed_row = rows.filter(has_text="Legacy cron job")
            await expect(doomed_row).to_contain_text(doomed[:14] + "…")
            await expect(doomed_row).to_contain_text("Active")
            await expect(rows.filter(has_text="Billing service")).to_contain_text("test")

            await doomed_row.get_by_role("button", name="Revoke").click()
            await expect(doomed_row).to_contain_text("Revoked")
            await expect(doomed_row.get_by_role("button", name="Revoke")).to_have_count(0)
            assert len(dialogs) == 1 and "Legacy cron job" in dialogs[0], dialogs
            assert await wait_for_api_status(server, doomed, 401) == 401
            assert await wait_for_api_status(server, kept, 200) == 200

            await page.screenshot(path=ARTIFACTS / "dashboard-keys.png", full_page=True)

            await page.reload()
            await expect(page.locator("#new-key-secret")).to_have_count(0)
            await expect(rows.filter(has_text="Legacy cron job")).to_contain_text("Revoked")

            await page.get_by_role("link", name="Account").click()
            await expect(page.locator("#email-section")).to_contain_text("Verified on")
            await page.get_by_label("Current password").fill(PASSWORD)
            await page.get_by_label("New password").fill("another long password")
            await page.get_by_role("button", name="Change password").click()
            await expect(page.locator("#account-notice")).to_contain_text("password was changed")
            await page.screenshot(path=ARTIFACTS / "dashboard-account.png", full_page=True)
        finally:
            await browser.close()
    assert problems == [], problems
