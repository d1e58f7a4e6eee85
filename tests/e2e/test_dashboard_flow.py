"""A new tenant's first hour in the dashboard, in one browser session against a real
`herald api` and `herald worker`: sign up, create a key, send a notification over HTTP and
see it appear in the open delivery log without a reload, open its timeline, replay the
message the sandbox refused from the dead-letter queue, edit the template and watch the
preview change, invite a viewer who then cannot revoke a key, and let a colleague sign in
through the tenant's OpenID provider (Canaille, on 127.0.0.1).

Each page has its own, longer browser test (tests/e2e/test_<area>_browser.py); this one is
the path between them. Screenshots: test-artifacts/flow-*.png.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import expect

from app.runtime import ServiceUrls
from tests.e2e.browser import PASSWORD, chromium, create_test_key, sign_up
from tests.e2e.test_sso_browser import sign_in_at_provider
from tests.oidc_provider import canaille
from tests.support import herald_api_and_worker

TEMPLATE = {
    "name": "Order shipped",
    "content": {"email": {"subject": "Order {{ order }} shipped", "text": "On its way."}},
}
CLIENT_SECRET = "flow-client-secret"


@pytest.fixture
def server(service_urls: ServiceUrls, tmp_path: Path) -> Iterator[str]:
    """The API and a worker; the API may call the identity provider on 127.0.0.1."""
    with herald_api_and_worker(
        service_urls.database_url,
        service_urls.redis_url,
        tmp_path,
        HERALD_ALLOW_PRIVATE_URLS="true",
    ) as api:
        yield api.url


async def statuses(api: httpx.AsyncClient, notification_id: str) -> dict[str, str]:
    answer = await api.get(f"/v1/notifications/{notification_id}")
    assert answer.status_code == 200, answer.text
    return {m["recipient"]: m["status"] for m in answer.json()["messages"]}


async def settled(api: httpx.AsyncClient, notification_id: str) -> dict[str, str]:
    """The messages' statuses once the worker has sent or failed every one."""
    deadline = time.monotonic() + 60
    while True:
        found = await statuses(api, notification_id)
        if (found and set(found.values()) <= {"sent", "failed"}) or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.5)


async def test_a_new_tenant_through_the_dashboard(server: str) -> None:
    provider = canaille()
    domain = f"d{uuid.uuid4().hex[:10]}.example"
    client_id = f"flow-{uuid.uuid4().hex[:8]}"
    colleague = f"cy@{domain}"
    colleague_login = provider.add_user(colleague, name="Cy Example")
    viewer_email = f"vic-{uuid.uuid4().hex[:8]}@acme.example"

    async with chromium() as session:
        page = session.page
        session.ignore(provider.issuer)  # the provider's own pages and fonts
        await sign_up(page, server, "Northwind")
        secret = await create_test_key(page, server)
        await session.screenshot("flow-key")
        api = httpx.AsyncClient(
            base_url=server, headers={"Authorization": f"Bearer {secret}"}, timeout=15
        )
        async with api:
            for path, body in (
                ("/v1/templates/order-shipped", TEMPLATE),
                ("/v1/recipients/ada", {"email": "ada@example.com"}),
                ("/v1/recipients/bob", {"email": "fail@sandbox.herald"}),
            ):
                answer = await api.put(path, json=body)
                assert answer.status_code in (200, 201), answer.text

            # The delivery log is open when the notification is sent: its rows arrive.
            await page.locator(".sidenav").get_by_role("link", name="Delivery log").click()
            await expect(page.locator("#log-live")).to_contain_text("Live")
            await page.evaluate("window.heraldMark = 'not reloaded'")
            accepted = await api.post(
                "/v1/notifications",
                json={"template": "order-shipped", "to": ["ada", "bob"], "data": {"order": "7"}},
            )
            assert accepted.status_code == 202, accepted.text
            notification_id = accepted.json()["id"]
            rows = page.locator("#log-rows tr.log-row")
            await expect(rows).to_have_count(2, timeout=30_000)
            assert await page.evaluate("window.heraldMark") == "not reloaded"
            await session.screenshot("flow-log")

            assert await settled(api, notification_id) == {"ada": "sent", "bob": "failed"}
            await rows.filter(has_text="ada").get_by_role("link", name="Timeline").click()
            timeline = page.locator("#timeline")
            await expect(timeline).to_contain_text("Accepted")
            await expect(timeline).to_contain_text("Attempt 1: sent")
            await session.screenshot("flow-timeline")

            # Bob's message is a dead letter: replayed from the page, after its dry run.
            await page.locator(".sidenav").get_by_role("link", name="Dead letters").click()
            group = page.locator(".group-row")
            await expect(group).to_have_count(1)
            await group.get_by_role("button", name="Replay").click()
            dry_run = page.locator("#dlq-dry-run")
            await expect(dry_run).to_contain_text("1 message will be replayed")
            await dry_run.get_by_role("button", name="Replay 1 message").click()
            await expect(page.locator("#dlq-result")).to_contain_text("1 message replayed")
            await session.screenshot("flow-dlq")
            replayed = await statuses(api, notification_id)
            assert replayed["bob"] in ("queued", "sending", "failed")  # the worker is quick
            assert (await settled(api, notification_id))["bob"] == "failed"

        # The template's preview follows the typing.
        await page.goto(f"{server}/templates/order-shipped")
        preview = page.locator("#preview .preview-subject")
        await page.locator('[name="data"]').fill('{"order": "42"}')
        await expect(preview).to_have_text("Order 42 shipped")
        subject = page.locator('[name="content.email.subject"]')
        await subject.fill("")
        await subject.press_sequentially("Parcel {{ order }} left the depot", delay=10)
        await expect(preview).to_have_text("Parcel 42 left the depot")
        await session.screenshot("flow-template")

        # A viewer, invited from test data (the invitation is shown, not mailed).
        await page.locator(".sidenav").get_by_role("link", name="Members").click()
        await page.get_by_label("E-mail", exact=True).fill(viewer_email)
        await page.get_by_label("Role", exact=True).select_option("viewer")
        await page.get_by_role("button", name="Send invitation").click()
        link = await page.locator("#sandbox-link").get_attribute("href")
        assert link
        viewer = await session.new_page()
        await viewer.goto(link if link.startswith("http") else f"{server}{link}")
        await viewer.get_by_label("Your name").fill("Vic Viewer")
        await viewer.get_by_label("Choose a password").fill(PASSWORD)
        await viewer.get_by_role("button", name="Create account and join").click()
        await expect(viewer.locator(".account-user")).to_contain_text("viewer")
        await viewer.goto(f"{server}/keys")
        key_rows = viewer.locator("#keys-body tr.key-row")
        await expect(key_rows).to_have_count(1)
        await expect(viewer.get_by_role("button", name="Revoke")).to_have_count(0)
        row_id = (await key_rows.first.get_attribute("id") or "").removeprefix("key-")
        headers = await viewer.locator("body").get_attribute("hx-headers") or ""
        token = re.search(r'"x-csrftoken": "([^"]+)"', headers)
        assert token
        forged = await viewer.context.request.post(
            f"{server}/keys/{row_id}/revoke", headers={"x-csrftoken": token.group(1)}
        )
        assert forged.status == 403
        await session.screenshot("flow-viewer", viewer)

        # Single sign-on: the owner connects the provider; a colleague signs in through it.
        await page.goto(f"{server}/settings/sso")
        redirect_uri = (await page.locator("#sso-redirect-uri").inner_text()).strip()
        provider.add_client(client_id, CLIENT_SECRET, [redirect_uri])
        await page.get_by_label("Issuer URL").fill(provider.issuer)
        await page.get_by_label("Client ID").fill(client_id)
        await page.get_by_label("Client secret").fill(CLIENT_SECRET)
        await page.get_by_label("E-mail domains").fill(domain)
        await page.get_by_role("button", name="Save").click()
        await expect(page.locator("#sso-notice")).to_contain_text("Saved.")
        cy = await session.new_page()
        await cy.goto(f"{server}/signin")
        await cy.get_by_role("link", name="Sign in with SSO").click()
        await cy.get_by_label("Work e-mail").fill(colleague)
        await cy.get_by_role("button", name="Continue").click()
        await cy.wait_for_url(f"{provider.issuer}/**")
        await sign_in_at_provider(cy, colleague_login)
        await expect(cy.locator(".account-tenant")).to_have_text("Northwind")
        await expect(cy.locator(".account-user")).to_contain_text("viewer")
        await session.screenshot("flow-sso", cy)
    assert session.problems == [], session.problems
