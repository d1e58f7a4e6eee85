"""What the browser tests share: Debian's Chromium driven by Playwright, a page that records
console errors, and signing up through the dashboard's own forms.

Under CI a missing Chromium fails the test rather than skipping it.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.async_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    async_playwright,
    expect,
)

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
# Every page's screenshot is taken at this size.
VIEWPORT = {"width": 1280, "height": 800}
PASSWORD = "a long enough password"
SECRET = re.compile(r"^hk_(live|test)_[0-9A-Za-z]{32}$")


def require_chromium() -> None:
    if CHROMIUM.exists():
        return
    message = f"{CHROMIUM} is missing: install the Debian package `chromium`"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@dataclass
class Session:
    """A browser context and its page, with what went wrong in it (console errors, page
    errors): a test asserts `problems == []` at its end."""

    browser: Browser
    context: BrowserContext
    page: Page
    problems: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    async def screenshot(self, name: str, page: Page | None = None) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        await (page or self.page).screenshot(path=str(ARTIFACTS / f"{name}.png"))

    async def new_page(self) -> Page:
        """Another signed-out person: a context (cookie jar) of their own."""
        context = await self.browser.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]
        page = await context.new_page()
        self._watch(page)
        return page

    def ignore(self, origin: str) -> None:
        """Console errors of pages and resources under `origin` (another party's site the
        test passes through, an identity provider's, say) are not Herald's problems."""
        self.ignored.append(origin)

    def _watch(self, page: Page) -> None:
        def on_console(message: ConsoleMessage) -> None:
            where = message.location.get("url", "") if message.location else ""
            foreign = tuple(self.ignored)
            if message.type != "error" or (foreign and where.startswith(foreign)):
                return
            if foreign and page.url.startswith(foreign):
                return
            self.problems.append(f"console: {message.text}")

        page.on("console", on_console)
        page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))


@asynccontextmanager
async def chromium() -> AsyncIterator[Session]:
    """Chromium with one page at VIEWPORT, watched for errors."""
    require_chromium()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        try:
            context = await browser.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]
            page = await context.new_page()
            session = Session(browser, context, page)
            session._watch(page)
            yield session
        finally:
            await browser.close()


async def sign_up(page: Page, base_url: str, company: str, password: str = PASSWORD) -> str:
    """Sign up through the form and land on the dashboard; the e-mail signed up with."""
    email = f"ada-{uuid.uuid4().hex[:8]}@acme.example"
    await page.goto(f"{base_url}/signup")
    await page.get_by_label("Company name").fill(company)
    await page.get_by_label("Your name").fill("Ada Example")
    await page.get_by_label("Work e-mail").fill(email)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Create account").click()
    await page.wait_for_load_state()
    return email


async def create_test_key(
    page: Page,
    base_url: str,
    name: str = "Backend",
    scopes: tuple[str, ...] = ("send", "read", "manage"),
) -> str:
    """A test key made on the keys page; the secret it reveals once."""
    await page.goto(f"{base_url}/keys")
    form = page.locator("#key-create form")
    await form.get_by_label("Name").fill(name)
    await form.locator("input[name=mode][value=test]").check(force=True)
    for checkbox in await form.locator("input[name=scopes]").all():
        await checkbox.set_checked(await checkbox.get_attribute("value") in scopes)
    await form.get_by_role("button", name="Create key").click()
    await expect(page.locator(".secret-reveal")).to_contain_text(f"Key “{name}” created")
    secret = (await page.locator("#new-key-secret").inner_text()).strip()
    assert SECRET.match(secret), secret
    return secret
