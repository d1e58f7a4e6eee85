"""Single sign-on in a real browser: an owner sets up the tenant's OpenID provider (Canaille,
a real one, on 127.0.0.1) on the settings page and tests the connection; then a new person
signs in with SSO: their work e-mail on Herald's page, the provider's login, password and
consent pages, and back to the dashboard as a viewer. A stranger to the tenant is refused
with a page that says why. Screenshots: test-artifacts/sso-settings.png, sso-settings-tested.png,
sso-signin-door.png (the sign-in page), sso-signin.png, sso-failed.png.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.async_api import Page, expect

from app.runtime import ServiceUrls
from tests.e2e.browser import chromium, sign_up
from tests.oidc_provider import PASSWORD as PROVIDER_PASSWORD
from tests.oidc_provider import canaille
from tests.support import herald_api

CLIENT_SECRET = "browser-test-client-secret"


@pytest.fixture
def server(service_urls: ServiceUrls, tmp_path: Path) -> Iterator[str]:
    """A `herald api` process that may call an identity provider on 127.0.0.1."""
    with herald_api(
        service_urls.database_url,
        service_urls.redis_url,
        tmp_path,
        HERALD_ALLOW_PRIVATE_URLS="true",
    ) as api:
        yield api.url


async def sign_in_at_provider(page: Page, login: str) -> None:
    """The provider's own pages, as the person sees them: login, password, and consent
    when the provider asks for it."""
    await page.locator('input[name="login"]').fill(login)
    await page.locator('button[type="submit"]').first.click()
    await page.locator('input[name="password"]').fill(PROVIDER_PASSWORD)
    await page.locator('button[type="submit"]').first.click()
    await page.wait_for_load_state()
    accept = page.locator('button[value="accept"]')
    if await accept.count():
        await accept.click()


async def test_owner_sets_up_sso_and_a_new_person_signs_in_through_the_provider(
    server: str,
) -> None:
    provider = canaille()
    domain = f"d{uuid.uuid4().hex[:10]}.example"
    client_id = f"herald-{uuid.uuid4().hex[:8]}"
    newcomer = f"bob@{domain}"
    newcomer_login = provider.add_user(newcomer, name="Bob Example")
    stranger_login = provider.add_user(f"eve@d{uuid.uuid4().hex[:10]}.example")

    async with chromium() as session:
        page = session.page
        session.ignore(provider.issuer)  # the provider's own pages and fonts
        await sign_up(page, server, "Umbrella SSO")
        await page.goto(f"{server}/settings/sso")
        await expect(page.locator("h1")).to_have_text("Single sign-on")
        redirect_uri = (await page.locator("#sso-redirect-uri").inner_text()).strip()
        assert redirect_uri == f"{server}/sso/callback"
        provider.add_client(client_id, CLIENT_SECRET, [redirect_uri])

        await page.get_by_label("Issuer URL").fill(provider.issuer)
        await page.get_by_label("Client ID").fill(client_id)
        await page.get_by_label("Client secret").fill(CLIENT_SECRET)
        await page.get_by_label("E-mail domains").fill(domain)
        await page.get_by_role("button", name="Save").click()
        await expect(page.locator("#sso-notice")).to_contain_text("Saved.")
        secret_field = page.get_by_label("Client secret")
        await expect(secret_field).to_have_value("")
        await expect(secret_field).to_have_attribute(
            "placeholder", "Stored — leave empty to keep it"
        )
        assert CLIENT_SECRET not in await page.content()
        await session.screenshot("sso-settings")

        await page.get_by_role("button", name="Test connection").click()
        await expect(page.locator("#sso-test-result")).to_contain_text("Connection works.")
        await session.screenshot("sso-settings-tested")

        # A new person of the tenant's domain: Herald's sign-in page, then the provider's.
        bob = await session.new_page()
        await bob.goto(f"{server}/signin")
        await session.screenshot("sso-signin-door", bob)
        await bob.get_by_role("link", name="Sign in with SSO").click()
        await expect(bob.locator("h1")).to_have_text("Sign in with SSO")
        await bob.get_by_label("Work e-mail").fill(newcomer)
        await session.screenshot("sso-signin", bob)
        await bob.get_by_role("button", name="Continue").click()
        await bob.wait_for_url(f"{provider.issuer}/**")
        await sign_in_at_provider(bob, newcomer_login)
        await bob.wait_for_url(f"{server}/overview")
        await expect(bob.locator(".account-tenant")).to_have_text("Umbrella SSO")
        await expect(bob.locator(".account-user")).to_contain_text("viewer")

        assert session.problems == []

        # Someone the provider knows who is neither a member nor of the tenant's domain.
        eve = await session.new_page()
        await eve.goto(f"{server}/sso")
        await eve.get_by_label("Work e-mail").fill(f"eve@{domain}")
        await eve.get_by_role("button", name="Continue").click()
        await sign_in_at_provider(eve, stranger_login)
        await expect(eve.locator("h1")).to_have_text("Single sign-on failed")
        await expect(eve.get_by_role("alert")).to_contain_text("Ask one of its owners")
        await session.screenshot("sso-failed", eve)

        # The refusal is a 400 page, which Chromium reports; nothing else went wrong.
        assert session.problems == [
            "console: Failed to load resource: the server responded with a status of 400 "
            "(Bad Request)"
        ]
