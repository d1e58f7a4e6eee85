"""The delivery log in a real browser: a notification sent over HTTP with a test key to a
real `herald api`, delivered by a real `herald worker`, appears in the open log without a
reload; its timeline opens from the row; a refused one is found by the status filter and its
page says why. Screenshots: test-artifacts/messages-log.png, messages-detail.png and
messages-failed.png.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import expect

from app.runtime import ServiceUrls
from tests.e2e.browser import chromium, create_test_key, sign_up
from tests.support import herald_api_and_worker

TEMPLATE = {
    "name": "Welcome",
    "content": {
        "email": {
            "subject": "Welcome aboard, {{ name }}",
            "html": "<h1>Hello {{ name }}</h1><p>Your account is ready.</p>",
            "text": "Hello {{ name }}, your account is ready.",
        }
    },
}


@pytest.fixture
def server(service_urls: ServiceUrls, tmp_path: Path) -> Iterator[str]:
    """`herald api` and a `herald worker` on this run's database and Redis; the API's URL."""
    with herald_api_and_worker(service_urls.database_url, service_urls.redis_url, tmp_path) as api:
        yield api.url


async def test_a_sent_notification_appears_live_and_opens_its_timeline(server: str) -> None:
    async with chromium() as session:
        page = session.page
        await sign_up(page, server, "Acme Browser")
        secret = await create_test_key(page, server)
        headers = {"Authorization": f"Bearer {secret}"}
        async with httpx.AsyncClient(base_url=server, headers=headers, timeout=10) as api:
            for path, body in (
                ("/v1/templates/welcome", TEMPLATE),
                ("/v1/recipients/ada-lovelace", {"email": "ada@example.com"}),
            ):
                answer = await api.put(path, json=body)
                assert answer.status_code in (200, 201), answer.text

            await page.goto(f"{server}/messages")
            await expect(page.locator("h1")).to_have_text("Delivery log")
            await expect(page.locator("#log-rows .empty-row")).to_contain_text("No messages yet")
            await expect(page.locator("#log-live")).to_contain_text("Live")
            # Anything that reloads the page loses this mark.
            await page.evaluate("window.heraldMark = 'still here'")

            accepted = await api.post(
                "/v1/notifications",
                json={"template": "welcome", "to": ["ada-lovelace"], "data": {"name": "Ada"}},
            )
            assert accepted.status_code == 202, accepted.text

            row = page.locator("#log-rows tr.log-row")
            await expect(row).to_have_count(1, timeout=30_000)
            await expect(row).to_contain_text("ada-lovelace")
            await expect(row).to_contain_text("welcome")
            await expect(page.locator("#log-rows .empty-row")).to_be_hidden()
            assert await page.evaluate("window.heraldMark") == "still here", "no reload"
            await expect(page.locator("#log-live")).to_contain_text("Live")
            await session.screenshot("messages-log")

            await row.get_by_role("link", name="Timeline").click()
            await expect(page.locator("h1")).to_contain_text("Email to ada-lovelace")
            # The row appeared when the message was made; its send may finish a moment later.
            for _ in range(30):
                if await page.locator("#timeline").get_by_text("Attempt 1: sent").count():
                    break
                await page.wait_for_timeout(500)
                await page.reload()
            timeline = page.locator("#timeline")
            await expect(timeline).to_contain_text("Accepted")
            await expect(timeline).to_contain_text("Dispatched")
            await expect(timeline).to_contain_text("Attempt 1: sent")
            await expect(timeline).to_contain_text("sandbox")
            await expect(page.locator("#content")).to_contain_text("Welcome aboard, Ada")
            frame = page.frame_locator("iframe.html-preview")
            await expect(frame.locator("h1")).to_have_text("Hello Ada")
            await expect(page.locator("#why-not-sent")).to_have_count(0)
            await session.screenshot("messages-detail")

            # A message the provider refuses: the log's filter finds it, its page says why.
            answer = await api.put(
                "/v1/recipients/bad-address", json={"email": "fail@sandbox.herald"}
            )
            assert answer.status_code in (200, 201), answer.text
            accepted = await api.post(
                "/v1/notifications",
                json={"template": "welcome", "to": ["bad-address"], "data": {"name": "B"}},
            )
            assert accepted.status_code == 202, accepted.text
            await page.goto(f"{server}/messages")
            await page.locator("#filter-status").select_option("failed")
            await page.get_by_role("button", name="Apply").click()
            await page.wait_for_url("**/messages?*status=failed*")
            failed = page.locator("#log-rows tr.log-row")
            # Made queued, then failed: the filtered page shows it once it has failed.
            for _ in range(30):
                if await failed.count():
                    break
                await page.wait_for_timeout(500)
                await page.reload()
            await expect(failed).to_have_count(1)
            await expect(failed).to_contain_text("bad-address")
            await failed.get_by_role("link", name="Timeline").click()
            await expect(page.locator("#why-not-sent")).to_contain_text("refused it for good")
            await expect(page.locator("#timeline")).to_contain_text("sandbox: invalid address")
            await session.screenshot("messages-failed")
        assert session.problems == []
