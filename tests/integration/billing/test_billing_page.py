"""The dashboard's billing page: owners only; Checkout and the portal reached through the
Stripe SDK against the local stand-in of Stripe; billing off without Stripe keys."""

from __future__ import annotations

from litestar import Litestar
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.models import Membership, User
from tests.dashboard import browser, post_form, sign_in, sign_up, unique_email
from tests.integration.billing.conftest import PRICES
from tests.integration.billing.fake_stripe import FakeStripe
from tests.integration.dashboard.test_dashboard import add_member


async def _tenant_of(session: AsyncSession, email: str) -> object:
    return await session.scalar(select(Membership.tenant_id).join(User).where(User.email == email))


async def test_an_owner_subscribes_and_reaches_the_portal(
    billing_app: Litestar, fake_stripe: FakeStripe, session: AsyncSession
) -> None:
    owner = unique_email("owner")
    async with browser(billing_app) as client:
        assert (await sign_up(client, owner)).status_code == 303
        shown = await client.get("/billing")
        assert shown.status_code == 200
        assert 'id="current-plan">free<' in shown.text
        # Its forms lead to Stripe's pages: this page alone lets a form go there.
        policy = shown.headers["content-security-policy"]
        assert "form-action 'self' https://checkout.stripe.com" in policy
        assert "Manage billing" not in shown.text  # no Stripe customer yet
        assert 'id="usage-email"' in shown.text and 'id="usage-sms"' in shown.text

        portal_first = await post_form(client, "/billing/portal", {})
        assert portal_first.status_code == 409 and "subscribe first" in portal_first.text

        started = await post_form(client, "/billing/checkout", {"plan": "growth"})
        assert started.status_code == 303
        assert started.headers["location"].startswith("https://checkout.stripe.com/")
        tenant_id = await _tenant_of(session, owner)
        [checkout] = [
            call
            for call in fake_stripe.calls("/v1/checkout/sessions")
            if call.form.get("client_reference_id") == str(tenant_id)
        ]
        assert checkout.form["line_items[0][price]"] == PRICES["growth"]
        assert checkout.form["success_url"].endswith("/billing?notice=subscribed")

        unknown = await post_form(client, "/billing/checkout", {"plan": "platinum"})
        assert unknown.status_code == 422 and "plans for sale" in unknown.text

        portal = await post_form(client, "/billing/portal", {})
        assert portal.status_code == 303
        assert portal.headers["location"].startswith("https://billing.stripe.com/")
        back = await client.get("/billing?notice=subscribed")
        assert "Stripe will confirm the payment" in back.text


async def test_only_owners_see_or_use_billing(
    billing_app: Litestar, fake_stripe: FakeStripe, session: AsyncSession
) -> None:
    owner = unique_email("owner")
    async with browser(billing_app) as client:
        assert (await sign_up(client, owner)).status_code == 303
    tenant_id = await _tenant_of(session, owner)
    assert tenant_id is not None
    before = len(fake_stripe.calls("/v1/checkout/sessions"))
    for role in ("admin", "developer", "viewer"):
        email = unique_email(role)
        await add_member(session, tenant_id, role, email)  # type: ignore[arg-type]
        async with browser(billing_app) as client:
            assert (await sign_in(client, email, "correct horse battery")).status_code == 303
            assert (await client.get("/billing")).status_code == 403
            assert "/billing" not in (await client.get("/account")).text  # not in the menu
            refused = await post_form(client, "/billing/checkout", {"plan": "growth"})
            assert refused.status_code == 403
            assert (await post_form(client, "/billing/portal", {})).status_code == 403
    assert len(fake_stripe.calls("/v1/checkout/sessions")) == before


async def test_without_stripe_keys_billing_is_off(app: Litestar) -> None:
    async with browser(app) as client:
        assert (await sign_up(client, unique_email())).status_code == 303
        shown = await client.get("/billing")
        assert shown.status_code == 200 and 'id="billing-off"' in shown.text
        assert "Switch to" not in shown.text
        off = await post_form(client, "/billing/checkout", {"plan": "growth"})
        assert off.status_code == 409
