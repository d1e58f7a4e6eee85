"""The overview in a real browser, against a real `herald api` process and real workers.

A new tenant signs up and lands on the overview's empty state; the commands it shows are
copied with the page's button and run in a shell, with a test key made on the keys page in
place of the placeholder; workers send what they asked for (and a dead letter); the
overview then shows the figures, the queue and the chart. Leaves test-artifacts/
overview-empty.png, overview.png and overview-full.png (the whole page).
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Page, expect

from app.runtime import ServiceUrls
from tests.e2e.browser import ARTIFACTS, chromium, sign_up
from tests.send_path import drain, workers
from tests.support import herald_api, settings_for


@pytest.fixture
def server(service_urls: ServiceUrls, tmp_path: Path) -> Iterator[str]:
    with herald_api(service_urls.database_url, service_urls.redis_url, tmp_path) as api:
        yield api.url


async def create_test_key(page: Page, base_url: str) -> str:
    """A test key with the send and manage scopes, made on the keys page; its secret."""
    await page.goto(f"{base_url}/keys")
    form = page.locator("#key-create form")
    await form.get_by_label("Name").fill("Quickstart")
    await form.locator("input[name=mode][value=test]").check(force=True)
    for scope in ("send", "manage"):
        await form.locator(f"input[name=scopes][value={scope}]").set_checked(True)
    await form.get_by_role("button", name="Create key").click()
    secret = page.locator("#new-key-secret")
    await expect(secret).to_be_visible()
    return (await secret.inner_text()).strip()


def run_commands(commands: str, secret: str) -> str:
    """The copied commands as a person runs them, their key's secret pasted in."""
    lines = commands.splitlines()
    assert lines[0].startswith("export HERALD_KEY=hk_test_...")
    script = "\n".join([f"export HERALD_KEY={secret}", *lines[1:]])
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script.replace("curl -s", "curl -sS --fail-with-body")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


async def test_the_overview_from_first_send_to_figures(
    server: str, service_urls: ServiceUrls
) -> None:
    async with chromium() as session:
        page = session.page
        await session.context.grant_permissions(
            ["clipboard-read", "clipboard-write"], origin=server
        )
        await sign_up(page, server, "Orbit Labs")
        await page.wait_for_url(f"{server}/overview")
        empty = page.locator("#first-send")
        await expect(empty).to_be_visible()
        await expect(page.locator("#create-key-link")).to_have_attribute("href", "/keys")
        await expect(page.locator(".nav-link.active")).to_have_text("Overview")
        await session.screenshot("overview-empty")

        copy = empty.locator(".copy-button")
        await copy.click()
        await expect(copy).to_have_text("Copied")
        commands = await page.evaluate("navigator.clipboard.readText()")
        assert "/v1/notifications" in commands and "Bearer $HERALD_KEY" in commands

        secret = await create_test_key(page, server)
        output = run_commands(commands, secret)
        assert '"status":"accepted"' in output.replace(" ", ""), output

        # One more, to an address the sandbox refuses for good: a dead letter.
        async with httpx.AsyncClient(base_url=server) as api:
            refused = await api.post(
                "/v1/notifications",
                headers={"Authorization": f"Bearer {secret}"},
                json={
                    "template": "welcome",
                    "to": [{"external_id": "user-2", "email": "fail@sandbox.herald"}],
                    "data": {"name": "Bo"},
                },
            )
            assert refused.status_code == 202, refused.text

        settings = settings_for(service_urls.database_url, service_urls.redis_url)
        async with workers(settings) as ctx:
            await drain(ctx, service_urls.redis_url)

        await page.goto(f"{server}/overview")
        await expect(page.locator("#first-send")).to_have_count(0)
        await expect(page.locator("#stat-accepted .stat-value")).to_have_text("2")
        await expect(page.locator("#stat-sent .stat-value")).to_have_text("1")
        await expect(page.locator("#stat-in-dlq .stat-value")).to_have_text("1")
        await expect(page.locator("#stat-delivery-rate .stat-value")).to_have_text("50%")
        await expect(page.locator("#queue-normal")).to_have_text("0")
        await expect(page.locator("#p50-today")).not_to_have_text("—")
        chart = page.locator("#daily-chart")
        await expect(chart).to_be_visible()
        await expect(chart.locator("rect.bar-sent")).to_have_count(1)
        await expect(chart.locator("rect.bar-dead-lettered")).to_have_count(1)
        box = await chart.bounding_box()
        assert box is not None and box["width"] > 600 and box["height"] > 100
        await expect(page.locator("#channel-email")).to_contain_text("E-mail")
        await session.screenshot("overview")
        await page.screenshot(path=str(ARTIFACTS / "overview-full.png"), full_page=True)

        await page.get_by_role("link", name="Today").click()
        await page.wait_for_url(f"{server}/overview?span=today")
        await expect(page.locator(".segment-link.active")).to_have_text("Today")
        await asyncio.sleep(0)  # let any late console message arrive before the check
        assert session.problems == []
