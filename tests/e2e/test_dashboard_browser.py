"""The dashboard in a real browser: a real `herald api` process driven by headless Chromium.

Signs up, creates API keys (the secret shown once, with a working copy button), revokes one
through the confirm dialog, and leaves a screenshot in test-artifacts/dashboard-keys.png.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import ConsoleMessage, Dialog, Page, async_playwright, expect

from app.runtime import ServiceUrls
from tests.support import free_port

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
STARTUP_SECONDS = 30
SECRET = re.compile(r"^hk_(live|test)_[0-9A-Za-z]{32}$")
PASSWORD = "a long enough password"


def require_chromium() -> None:
    if CHROMIUM.exists():
        return
    message = f"{CHROMIUM} is missing: install the Debian package `chromium`"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def _wait_until_ready(base_url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"herald api exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{base_url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass  # not listening yet
        time.sleep(0.2)
    pytest.fail(f"herald api was not ready within {STARTUP_SECONDS} s:\n{log.read_text()}")


@pytest.fixture
def server(service_urls: ServiceUrls, tmp_path: Path) -> Iterator[str]:
    """A `herald api` process on a free port, against this run's test database; its URL."""
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": service_urls.database_url,
        "REDIS_URL": service_urls.redis_url,
        "HERALD_ENV": "test",
        "HERALD_DATA_DIR": str(tmp_path / "data"),
        "HERALD_SECRET_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
    }
    log = tmp_path / "server.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "api", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            cwd=ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_ready(base_url, process, log)
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def sign_up(page: Page, base_url: str, company: str) -> None:
    await page.goto(f"{base_url}/signup")
    await page.get_by_label("Company name").fill(company)
    await page.get_by_label("Your name").fill("Ada Example")
    await page.get_by_label("Work e-mail").fill(f"ada-{uuid.uuid4().hex[:8]}@acme.example")
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Create account").click()
    await page.wait_for_url(f"{base_url}/keys")


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


async def test_dashboard_keys_in_a_browser(server: str) -> None:
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

            await sign_up(page, server, "Acme Rockets")
            await expect(page.locator(".account-tenant")).to_have_text("Acme Rockets")
            await expect(page.locator("#keys-body .empty-row")).to_be_visible()

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
        finally:
            await browser.close()
    assert problems == [], problems
