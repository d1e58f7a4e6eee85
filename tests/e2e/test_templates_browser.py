"""The templates pages in a real browser against a real `herald api` process: create a
template, edit it and watch the preview change as you type (rendered by the server's render
pool), see an error at its line, save a version, send a test to yourself, compare versions.
Leaves test-artifacts/templates-list.png, templates-editor.png, templates-versions.png and
templates-diff.png.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.async_api import expect

from app.runtime import ServiceUrls
from tests.e2e.browser import chromium, sign_up
from tests.support import herald_api


@pytest.fixture
def server(service_urls: ServiceUrls, tmp_path: Path) -> Iterator[str]:
    with herald_api(service_urls.database_url, service_urls.redis_url, tmp_path) as api:
        yield api.url


async def test_edit_a_template_and_see_the_preview_change(server: str) -> None:
    async with chromium() as session:
        page = session.page
        await sign_up(page, server, "Templates Ltd")

        await page.goto(f"{server}/templates")
        await expect(page.locator("#templates-empty")).to_be_visible()
        await page.get_by_label("Key").fill("order.shipped")
        await page.get_by_label("Name").fill("Order shipped")
        await page.locator("#template-new").get_by_text("SMS", exact=True).click()
        await page.get_by_role("button", name="Create template").click()
        await page.wait_for_url(f"{server}/templates/order.shipped")

        preview = page.locator("#preview")
        await expect(preview.locator(".preview-subject")).to_have_text("Hello Ada")

        # Typing re-renders the preview (debounced), without saving anything.
        subject = page.locator('[name="content.email.subject"]')
        await subject.fill("")
        await subject.press_sequentially("Your order {{ name }} is on its way", delay=15)
        await expect(preview.locator(".preview-subject")).to_have_text(
            "Your order Ada is on its way"
        )
        await page.locator('[name="data"]').fill('{"name": "#1042"}')
        await expect(preview.locator(".preview-subject")).to_have_text(
            "Your order #1042 is on its way"
        )
        html = page.locator('[name="content.email.html"]')
        await html.fill(
            '<h1 style="color: rgb(79, 70, 229)">On its way</h1>\n'
            "<p>Order <strong>{{ name }}</strong> left.</p>"
        )
        frame = page.frame_locator(".preview-frame")
        await expect(frame.locator("strong")).to_have_text("#1042")
        # The e-mail's own inline styles apply in its frame.
        await expect(frame.locator("h1")).to_have_css("color", "rgb(79, 70, 229)")

        # The SMS tab: its preview counts segments; an error is shown at its line.
        await page.locator('[data-channel-tab="sms"]').click()
        sms = page.locator('[name="content.sms.text"]')
        await expect(sms).to_be_visible()
        await expect(page.locator("#sms-encoding")).to_have_text("GSM-7")
        await sms.fill("Order {{ name }} shipped.\nTrack it: {{ tracking.url }}")
        error = preview.locator(".source-error")
        await expect(error).to_contain_text("line 2")
        await expect(error).to_contain_text("'tracking' is undefined")
        await expect(
            page.locator('.source-field.has-error [name="content.sms.text"]')
        ).to_be_visible()
        await sms.fill("Order {{ name }} shipped 🚚")
        await expect(page.locator("#sms-encoding")).to_have_text("UCS-2")
        await expect(page.locator(".source-field.has-error")).to_have_count(0)

        await page.get_by_role("button", name="Save new version").click()
        await expect(page.locator("#save-ok")).to_contain_text("Saved version 2")
        await expect(page.locator("#template-version")).to_have_text("2")

        await page.get_by_role("button", name="Send a test to me").click()
        await expect(page.locator("#test-ok")).to_contain_text("delivered to the sandbox")

        await page.locator('[data-channel-tab="email"]').click()
        await expect(preview.locator(".preview-subject")).to_have_text(
            "Your order #1042 is on its way"
        )
        await page.evaluate("window.scrollTo(0, 0)")
        await session.screenshot("templates-editor")

        await page.get_by_role("link", name="Versions", exact=True).click()
        await page.wait_for_url(f"{server}/templates/order.shipped/versions")
        await expect(page.locator("#versions-table tbody tr")).to_have_count(2)
        await session.screenshot("templates-versions")
        await page.get_by_role("button", name="Compare").click()
        await page.wait_for_url("**/diff?from=1&to=2")
        await expect(
            page.locator("#diff-table .diff-insert, #diff-table .diff-replace").first
        ).to_be_visible()
        await expect(page.locator("#diff-table")).to_contain_text(
            "Your order {{ name }} is on its way"
        )
        await session.screenshot("templates-diff")

        await page.goto(f"{server}/templates")
        await expect(page.locator("#template-order\\.shipped")).to_contain_text("v2")
        await session.screenshot("templates-list")
        assert session.problems == []
