"""The webhooks, receipts and audit pages in a real browser against a real `herald api`.

Adds an endpoint through the form (its secret shown once), sends it a test event, sees the
delivery fail in its log (the endpoint's answers are recorded as the sender records them)
and resends it; switches to live data and opens a receipt made by the receipts service;
reads the audit log with its chain verified. Screenshots: test-artifacts/webhooks-list.png,
webhooks-endpoint.png, receipts.png, receipt-detail.png and audit.png.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from playwright.async_api import Page, expect
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app import crypto
from app.auth import accounts
from app.auth.models import User
from app.db import utcnow
from app.providers import service as providers
from app.receipts import service as receipts
from app.receipts.events import Parsed, ReceiptEvent, refused
from app.runtime import ServiceUrls
from app.settings import Settings, load_settings
from app.webhooks import delivery
from app.webhooks.models import WebhookDelivery, WebhookEndpoint
from tests.e2e.browser import chromium, sign_up
from tests.integration.receipts.test_receipts import SendgridSigner, messages
from tests.support import TenantKey, herald_api

URL = "https://hooks.example.com/herald"


@pytest.fixture
def server(service_urls: ServiceUrls, tmp_path: Path) -> Iterator[str]:
    """A `herald api` whose audit keys are this process's: the entries the test appends (a
    provider config made through the service) and the server's form one verifiable chain."""
    with herald_api(
        service_urls.database_url,
        service_urls.redis_url,
        tmp_path,
        HERALD_DATA_DIR=str(load_settings().data_dir),
    ) as api:
        yield api.url


async def tenant_of(session: AsyncSession, email: str) -> uuid.UUID:
    user = await session.scalar(select(User).where(User.email == email))
    assert user is not None
    (access,) = await accounts.tenants_of(session, user_id=user.id)
    return access.tenant.id


async def fail_every_attempt(session: AsyncSession, endpoint_id: uuid.UUID) -> None:
    """Record what a sender would have seen: the endpoint answering 503 to every attempt."""
    endpoint = await session.scalar(
        select(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id)
    )
    sent = await session.scalar(
        select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id)
    )
    assert endpoint is not None and sent is not None
    while sent.status == "pending":
        delivery.record(sent, endpoint, delivery.Outcome(503, 212, "HTTP 503"), utcnow())
    await session.commit()


async def receipts_for(session: AsyncSession, settings: Settings, tenant_id: uuid.UUID) -> None:
    """A verified SendGrid receipt about two live messages, and a forged one refused."""
    saved = await providers.create_config(
        session,
        tenant_id=tenant_id,
        data=providers.ConfigInput(
            channel="email",
            provider="sendgrid",
            name="SendGrid production",
            credentials={
                "api_key": "SG.x",
                "webhook_verification_key": SendgridSigner().public,
            },
            options={"from_email": "hello@acme.test"},
        ),
        actor="test",
        keyring=crypto.keyring_for(settings),
    )
    config = receipts.Config(saved.config.id, tenant_id, "sendgrid", "free")
    sent = await messages(session, TenantKey(tenant_id, uuid.uuid4(), ""), 2)
    now = utcnow()
    events = [
        {
            "email": message.address,
            "event": kind,
            "sg_event_id": uuid.uuid4().hex,
            "herald_message_id": str(message.id),
            "timestamp": int(now.timestamp()),
        }
        for message, kind in zip(sent, ("delivered", "open"), strict=True)
    ]
    parsed = Parsed(
        "verified",
        [
            ReceiptEvent(
                provider_event_id=str(event["sg_event_id"]),
                message_id=message.id,
                provider_message_id=None,
                kind="delivered" if event["event"] == "delivered" else "opened",
                occurred_at=now - timedelta(seconds=30),
                detail={"event": event["event"]},
                suppress=None,
            )
            for message, event in zip(sent, events, strict=True)
        ],
    )
    headers = {
        "content-type": "application/json",
        "user-agent": "SendGrid Event API",
        "x-twilio-email-event-webhook-signature": "MEUCIQ…",
        "authorization": "Basic c2VjcmV0",
    }
    body = json.dumps(events).encode()
    await receipts.store(session, config, parsed, headers=headers, body=body, now=now)
    forged = refused("bad_signature", "the signature does not match the verification key")
    await receipts.store(
        session, config, forged, headers=headers, body=body, now=now + timedelta(seconds=5)
    )
    await session.commit()


async def add_endpoint(page: Page, base_url: str) -> str:
    await page.goto(f"{base_url}/webhooks")
    await expect(page.locator("#endpoints-table .empty-row")).to_be_visible()
    form = page.locator("#endpoint-create form")
    await form.get_by_label("Endpoint URL").fill(URL)
    await form.get_by_label("Description").fill("Delivery reports to the CRM")
    for name in ("message.delivered", "message.bounced", "message.failed"):
        await form.locator(f"input[value='{name}']").check()
    await form.get_by_role("button", name="Add endpoint").click()
    await page.wait_for_load_state()
    await expect(page.locator("#new-endpoint-secret")).to_have_text(re.compile(r"^whsec_"))
    found = re.search(
        r"/webhooks/([0-9a-f-]{36})",
        await page.locator("form[action$='/test']").get_attribute("action") or "",
    )
    assert found
    return found.group(1)


async def test_endpoints_deliveries_receipts_and_audit_in_a_browser(
    server: str, session: AsyncSession, settings: Settings
) -> None:
    async with chromium() as browser:
        page = browser.page
        email = await sign_up(page, server, "Acme Hooks")
        await page.wait_for_url(f"{server}/overview")  # the dashboard's home
        tenant_id = await tenant_of(session, email)

        endpoint_id = await add_endpoint(page, server)
        await page.get_by_role("button", name="Send test event").click()
        await expect(page.locator(".alert-info")).to_contain_text("A test event is on its way")
        rows = page.locator("#deliveries-body tr.delivery-row")
        await expect(rows).to_have_count(1)
        await expect(rows.first).to_contain_text("webhook.test")
        await expect(rows.first).to_contain_text("Pending")
        await expect(page.locator("#new-endpoint-secret")).to_have_count(0)

        await fail_every_attempt(session, uuid.UUID(endpoint_id))
        await page.goto(f"{server}/webhooks/{endpoint_id}")
        row = rows.first
        await expect(row).to_contain_text("Failed")
        await expect(row).to_contain_text("503")
        await expect(row).to_contain_text("212 ms")
        await row.get_by_text("Payload").click()
        await expect(row.locator("pre")).to_contain_text('"type": "webhook.test"')
        await page.locator("#deliveries").scroll_into_view_if_needed()
        await browser.screenshot("webhooks-endpoint")
        await row.get_by_role("button", name="Resend").click()
        await expect(rows.first).to_contain_text("Pending")

        await page.get_by_role("link", name="Webhooks").first.click()
        await expect(page.locator("#endpoints-table")).to_contain_text(URL)
        await expect(page.locator("#endpoints-table")).to_contain_text("Failing since")
        await browser.screenshot("webhooks-list")

        # Receipts: none in test mode; live ones once the data switch says live.
        await receipts_for(session, settings, tenant_id)
        await page.get_by_role("link", name="Receipts").click()
        await expect(page.locator("#test-mode-receipts")).to_contain_text(
            "Test mode has no receipts"
        )
        await page.get_by_role("button", name="View live data").click()
        await page.wait_for_url(f"{server}/receipts")
        receipt_rows = page.locator("#receipts-table tbody tr:not(.empty-row)")
        await expect(receipt_rows).to_have_count(2)
        await expect(receipt_rows.first).to_contain_text("bad signature")
        await browser.screenshot("receipts")
        await page.locator("select[name=verdict]").select_option("verified")
        await page.get_by_role("button", name="Filter").click()
        await expect(receipt_rows).to_have_count(1)
        await receipt_rows.first.get_by_role("link").click()
        await expect(page.locator("#verdict")).to_have_text("verified")
        await expect(page.locator("#events-table a[href^='/messages/']")).to_have_count(2)
        await expect(page.locator("#headers-table")).to_contain_text("[redacted]")
        await expect(page.locator("#receipt-body")).to_contain_text('"event": "delivered"')
        await browser.screenshot("receipt-detail")

        await page.get_by_role("link", name="Audit log").click()
        await expect(page.locator("#chain-verdict")).to_have_text("Verified")
        audit_rows = page.locator("#audit-table tbody tr:not(.empty-row)")
        await expect(audit_rows.first).to_contain_text("provider.created")
        for action in ("webhook_delivery.resent", "webhook_endpoint.test_sent"):
            await expect(page.locator("#audit-table")).to_contain_text(action)
        await browser.screenshot("audit")

        # Delete the endpoint (after its confirmation): its log goes with it, so nothing of
        # this test is left due for the senders of later tests (its secret is sealed under
        # the server's keys, not theirs).
        await page.get_by_role("button", name="View test data").click()
        await page.goto(f"{server}/webhooks/{endpoint_id}")
        page.once("dialog", lambda dialog: dialog.accept())
        await page.get_by_role("button", name="Delete").click()
        await page.wait_for_url(f"{server}/webhooks")
        await expect(page.locator("#endpoints-table .empty-row")).to_be_visible()
        assert (
            await session.scalar(
                select(WebhookDelivery.id).where(
                    WebhookDelivery.endpoint_id == uuid.UUID(endpoint_id)
                )
            )
            is None
        )

        assert browser.problems == []
