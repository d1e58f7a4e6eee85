"""The recipients, providers and settings pages in a real browser, against a real `herald api`.

Signs up, creates a test key and registers recipients with it over HTTP; then, as the owner
in Chromium: searches a recipient, opens their page, erases them after typing their id;
adds an SMTP provider through the form; pauses e-mail on the settings page. Screenshots go
to test-artifacts/recipients-list.png, recipients-detail.png, providers.png,
providers-edit.png and settings.png.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import expect

from app.runtime import ServiceUrls
from tests.e2e.browser import chromium, sign_up
from tests.e2e.test_dashboard_browser import create_key
from tests.support import herald_api

SMTP_PASSWORD = "e2e-smtp-Password-never-shown"


@pytest.fixture
def server(service_urls: ServiceUrls, tmp_path: Path) -> Iterator[str]:
    with herald_api(service_urls.database_url, service_urls.redis_url, tmp_path) as api:
        yield api.url


async def test_recipients_providers_and_settings_in_a_browser(server: str) -> None:
    async with chromium() as session:
        page = session.page
        await sign_up(page, server, "Umbrella")
        await page.wait_for_url(f"{server}/overview")  # the dashboard's home
        await page.goto(f"{server}/keys")
        secret = await create_key(page, "Seeder", "test", ["send", "read", "manage"])
        headers = {"Authorization": f"Bearer {secret}"}
        async with httpx.AsyncClient(base_url=server, headers=headers) as api:
            for external_id, email in (
                ("ada-lovelace", "ada@analytical.example"),
                ("alan-turing", "alan@bletchley.example"),
                ("grace-hopper", "grace@navy.example"),
            ):
                answer = await api.put(
                    f"/v1/recipients/{external_id}",
                    json={"email": email, "locale": "en", "data": {"plan": "pro"}},
                )
                assert answer.status_code == 201, answer.text
            prefs = await api.put(
                "/v1/recipients/ada-lovelace/preferences",
                json={"channels": {"sms": False}, "categories": {"marketing": {"email": False}}},
            )
            assert prefs.status_code == 200, prefs.text
            suppressed = await api.post(
                "/v1/suppressions",
                json={
                    "channel": "email",
                    "address": "ada@analytical.example",
                    "reason": "complaint",
                },
            )
            assert suppressed.status_code == 201, suppressed.text

        # Recipients: search, open, erase.
        await page.goto(f"{server}/recipients")
        await expect(page.locator("#recipients-table tbody tr")).to_have_count(3)
        await page.get_by_label("Find a recipient").fill("ada")
        await page.get_by_role("button", name="Search").click()
        await expect(page.locator("#recipients-table tbody tr")).to_have_count(1)
        await expect(page.locator("#recipients-heading")).to_contain_text("starting with “ada”")
        await session.screenshot("recipients-list")
        await page.get_by_role("link", name="ada-lovelace").click()
        await expect(page.locator("#recipient-title")).to_have_text("ada-lovelace")
        await expect(page.locator("#suppressions-table")).to_contain_text("complaint")
        await expect(page.locator("#preference-table")).to_contain_text("marketing")
        await session.screenshot("recipients-detail")

        confirm = page.get_by_label("to confirm")
        await confirm.fill("ada")  # not the id: refused, nothing erased
        await page.get_by_role("button", name="Erase recipient").click()
        await expect(page.locator("#error-confirm")).to_contain_text("nothing was erased")
        await page.get_by_label("to confirm").fill("ada-lovelace")
        await page.get_by_role("button", name="Erase recipient").click()
        await page.wait_for_url(f"{server}/recipients?notice=erased")
        await expect(page.get_by_role("status")).to_contain_text("was erased")
        await expect(page.locator("#recipients-table tbody tr")).to_have_count(2)
        await expect(page.locator("#recipients-table")).not_to_contain_text("ada-lovelace")

        # Providers: add an SMTP relay through the form; its password never comes back.
        await page.goto(f"{server}/providers")
        await expect(page.locator("#providers-email")).to_contain_text("No email provider yet")
        await page.get_by_role("link", name="Add provider", exact=True).click()
        await page.get_by_role("link", name="SMTP server").click()
        await page.get_by_label("Name", exact=True).fill("Office relay")
        await page.get_by_label("From email").fill("noreply@umbrella.example")
        await page.get_by_label("Host").fill("smtp.umbrella.example")
        await page.get_by_label("Port").fill("587")
        await page.get_by_label("Username").fill("relay")
        await page.get_by_label("Password").fill(SMTP_PASSWORD)
        await page.get_by_role("button", name="Add provider").click()
        await page.wait_for_url(f"{server}/providers?notice=created")
        email_card = page.locator("#providers-email")
        await expect(email_card).to_contain_text("Office relay")
        await expect(email_card.locator(".breaker")).to_have_text("Closed")
        assert SMTP_PASSWORD not in await page.content()
        await session.screenshot("providers")
        await email_card.get_by_role("link", name="Edit").click()
        await expect(page.get_by_label("From email")).to_have_value("noreply@umbrella.example")
        await expect(page.get_by_label("Password")).to_have_value("")
        await session.screenshot("providers-edit")
        assert SMTP_PASSWORD not in await page.content()

        # Settings: pause e-mail.
        await page.goto(f"{server}/settings")
        row = page.locator("#switch-email")
        await expect(row.locator(".switch-state")).to_have_text("Sending")
        await row.locator("label.segment", has_text="Paused").click()
        await row.get_by_role("button", name="Apply").click()
        await page.wait_for_url(f"{server}/settings?notice=switch")
        await expect(page.locator("#switch-email .switch-state")).to_have_text("Paused")
        await session.screenshot("settings")

        # The one refused confirmation answered 422, which Chromium logs as a failed load.
        refused = "the server responded with a status of 422"
        assert [p for p in session.problems if refused not in p] == []
        assert len(session.problems) == 1
