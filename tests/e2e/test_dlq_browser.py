"""The notifications and dead-letter pages in a real browser, against a real `herald api`
process: sign up, create a test key, send a notification over HTTP to one address that
delivers and one the sandbox refuses, let real workers deliver it, see its totals, then
replay the dead letter from the page (dry run, confirmation with the count, result) and see
it queued again. Leaves test-artifacts/notifications-list.png, notifications-detail.png,
dlq-groups.png, dlq-dry-run.png, dlq-replay.png, dlq-group.png and dlq-item.png.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import expect

from app.runtime import ServiceUrls
from tests.e2e.browser import chromium, create_test_key, sign_up
from tests.fakes import Mailbox
from tests.send_path import drain, workers
from tests.support import herald_api, settings_for

EMAIL = {"email": {"subject": "Your order {{ order }}", "text": "Order {{ order }} shipped."}}


@pytest.fixture
def server(
    service_urls: ServiceUrls, tmp_path: Path, mailbox: tuple[Mailbox, int]
) -> Iterator[str]:
    _, smtp_port = mailbox
    with herald_api(
        service_urls.database_url,
        service_urls.redis_url,
        tmp_path,
        HERALD_SMTP_URL=f"smtp://127.0.0.1:{smtp_port}",
    ) as api:
        yield api.url


async def send(base_url: str, secret: str) -> str:
    """A notification to a recipient whose mail is delivered and one the sandbox refuses."""
    headers = {"Authorization": f"Bearer {secret}"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers) as api:
        for path, body in [
            ("/v1/templates/order-shipped", {"name": "Order shipped", "content": EMAIL}),
            ("/v1/recipients/ada", {"email": "ada@example.com"}),
            ("/v1/recipients/bob", {"email": "fail@sandbox.herald"}),
        ]:
            answer = await api.put(path, json=body)
            assert answer.status_code in (200, 201), answer.text
        accepted = await api.post(
            "/v1/notifications",
            json={"template": "order-shipped", "to": ["ada", "bob"], "data": {"order": "A-1"}},
        )
        assert accepted.status_code == 202, accepted.text
        return str(accepted.json()["id"])


async def message_statuses(base_url: str, secret: str, notification_id: str) -> dict[str, str]:
    async with httpx.AsyncClient(base_url=base_url) as api:
        answer = await api.get(
            f"/v1/notifications/{notification_id}",
            headers={"Authorization": f"Bearer {secret}"},
        )
    assert answer.status_code == 200, answer.text
    return {m["recipient"]: m["status"] for m in answer.json()["messages"]}


async def deliver(
    service_urls: ServiceUrls, base_url: str, secret: str, notification_id: str
) -> dict[str, str]:
    """Run real workers until the notification's messages are all sent or failed (the API
    hands its jobs over after answering, and the relay catches any it missed): their
    statuses by recipient."""
    settings = settings_for(service_urls.database_url, service_urls.redis_url)
    deadline = time.monotonic() + 120
    async with workers(settings) as ctx:
        while True:
            await drain(ctx, service_urls.redis_url)
            statuses = await message_statuses(base_url, secret, notification_id)
            final = statuses and set(statuses.values()) <= {"sent", "failed"}
            if final or time.monotonic() > deadline:
                return statuses
            await asyncio.sleep(0.5)


async def test_a_dead_letter_is_replayed_from_the_page(
    server: str, service_urls: ServiceUrls
) -> None:
    async with chromium() as session:
        page = session.page
        await sign_up(page, server, "Parcel Post")
        secret = await create_test_key(page, server)
        notification_id = await send(server, secret)
        assert await deliver(service_urls, server, secret, notification_id) == {
            "ada": "sent",
            "bob": "failed",
        }

        await page.goto(f"{server}/notifications")
        row = page.locator(f"#notification-{notification_id}")
        await expect(row).to_contain_text("order-shipped")
        await expect(row).to_contain_text("1 sent")
        await expect(row).to_contain_text("1 failed")
        await session.screenshot("notifications-list")

        await row.get_by_role("link").first.click()
        await page.wait_for_url(f"{server}/notifications/{notification_id}")
        await expect(page.locator('[data-status="sent"]')).to_contain_text("1")
        await expect(page.locator('[data-status="failed"]')).to_contain_text("1")
        await expect(page.locator("#messages-link")).to_have_attribute(
            "href", f"/messages?notification={notification_id}"
        )
        await session.screenshot("notifications-detail")

        await page.locator(".sidenav").get_by_role("link", name="Dead letters").click()
        await page.wait_for_url(f"{server}/dlq")
        group = page.locator(".group-row")
        await expect(group).to_have_count(1)
        await expect(group).to_contain_text("permanent")
        await expect(group).to_contain_text("sandbox")
        await session.screenshot("dlq-groups")

        # The dry run says how many; nothing is replayed until the confirmation.
        await group.get_by_role("button", name="Replay").click()
        dry_run = page.locator("#dlq-dry-run")
        await expect(dry_run).to_contain_text("1 message will be replayed")
        await session.screenshot("dlq-dry-run")
        statuses = await message_statuses(server, secret, notification_id)
        assert statuses["bob"] == "failed"
        await dry_run.get_by_role("button", name="Replay 1 message").click()
        await expect(page.locator("#dlq-result")).to_contain_text("1 message replayed")
        # The groups reload themselves: the replayed message is no longer a dead letter.
        await expect(page.locator(".group-row")).to_have_count(0)
        await expect(page.locator("#dlq-groups")).to_contain_text("No dead letters")
        await session.screenshot("dlq-replay")
        assert (await message_statuses(server, secret, notification_id))["bob"] == "queued"

        # Delivered again, refused again: it is back in the queue with a second attempt.
        assert (await deliver(service_urls, server, secret, notification_id))["bob"] == "failed"
        await page.goto(f"{server}/dlq")
        await page.locator(".group-row").get_by_role("link", name="Inspect").click()
        await expect(page.locator("#dlq-items tbody tr:not(.empty-row)")).to_have_count(1)
        await session.screenshot("dlq-group")
        await page.locator("#dlq-items a").first.click()
        await expect(page.locator("#attempts tbody tr:not(.empty-row)")).to_have_count(2)
        await expect(page.locator("#last-error")).not_to_be_empty()
        await session.screenshot("dlq-item")
        assert session.problems == []
