"""Checkout, the Customer Portal and overage meter events through the Stripe SDK, against a
local server answering Stripe's shapes; and billing switched off without Stripe keys."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from app import billing
from app.billing import service
from app.billing.client import stripe_client
from app.db import utcnow
from app.settings import Settings, SettingsError
from tests.integration.billing import stripe_events as events
from tests.integration.billing.conftest import PRICES, Webhooks
from tests.integration.billing.fake_stripe import FakeStripe
from tests.support import TenantKey, key_of, settings_for

SUCCESS, CANCEL = "https://app.example.com/billing/done", "https://app.example.com/billing"


def checkout_body(plan: str = "growth") -> dict[str, str]:
    return {"plan": plan, "success_url": SUCCESS, "cancel_url": CANCEL}


async def test_checkout_subscribes_through_one_customer_per_tenant(
    billing_client: httpx.AsyncClient, fake_stripe: FakeStripe, tenant: TenantKey
) -> None:
    before = len(fake_stripe.calls("/v1/customers"))
    first = await billing_client.post(
        "/v1/billing/checkout", json=checkout_body(), headers=tenant.headers
    )
    assert first.status_code == 201, first.text
    assert first.json()["kind"] == "checkout"
    assert first.json()["url"].startswith("https://checkout.stripe.com/c/pay/cs_test_")
    second = await billing_client.post(
        "/v1/billing/checkout", json=checkout_body("enterprise"), headers=tenant.headers
    )
    assert second.status_code == 201

    customers = fake_stripe.calls("/v1/customers")[before:]
    assert len(customers) == 1  # reused by the second checkout
    assert customers[0].form["metadata[tenant_id]"] == str(tenant.tenant_id)
    assert customers[0].headers["authorization"] == "Bearer sk_test_herald"
    sessions = [
        c
        for c in fake_stripe.calls("/v1/checkout/sessions")
        if c.form.get("client_reference_id") == str(tenant.tenant_id)
    ]
    assert [s.form["line_items[0][price]"] for s in sessions] == [
        PRICES["growth"],
        PRICES["enterprise"],
    ]
    form = sessions[0].form
    assert form["mode"] == "subscription"
    assert form["customer"].startswith("cus_")
    assert (form["success_url"], form["cancel_url"]) == (SUCCESS, CANCEL)
    assert form["subscription_data[metadata][tenant_id]"] == str(tenant.tenant_id)


async def test_a_paying_tenant_changes_plan_in_the_portal_not_a_second_subscription(
    billing_client: httpx.AsyncClient,
    webhooks: Webhooks,
    fake_stripe: FakeStripe,
    tenant: TenantKey,
) -> None:
    started = await billing_client.post(
        "/v1/billing/checkout", json=checkout_body(), headers=tenant.headers
    )
    assert started.status_code == 201
    customer = next(
        c.form["customer"]
        for c in fake_stripe.calls("/v1/checkout/sessions")
        if c.form.get("client_reference_id") == str(tenant.tenant_id)
    )
    sub, now = f"sub_{uuid.uuid4().hex[:20]}", int(time.time())
    created = events.subscription(
        "created", sub, customer, price=PRICES["growth"], born=now, created=now
    )
    assert (await webhooks.post(created)).json()["outcome"] == "applied"

    same = await billing_client.post(
        "/v1/billing/checkout", json=checkout_body(), headers=tenant.headers
    )
    assert same.status_code == 409
    upgrade = await billing_client.post(
        "/v1/billing/checkout", json=checkout_body("enterprise"), headers=tenant.headers
    )
    assert upgrade.status_code == 201
    assert upgrade.json()["kind"] == "plan_change"
    portal = [
        c
        for c in fake_stripe.calls("/v1/billing_portal/sessions")
        if c.form["customer"] == customer
    ]
    flow = portal[-1].form
    assert flow["flow_data[type]"] == "subscription_update_confirm"
    assert flow["flow_data[subscription_update_confirm][subscription]"] == sub
    assert flow["flow_data[subscription_update_confirm][items][0][price]"] == PRICES["enterprise"]
    assert flow["flow_data[subscription_update_confirm][items][0][id]"] == f"si_{sub[4:]}"

    manage = await billing_client.post(
        "/v1/billing/portal", json={"return_url": CANCEL}, headers=tenant.headers
    )
    assert manage.status_code == 201
    assert manage.json()["kind"] == "portal"
    assert manage.json()["url"].startswith("https://billing.stripe.com/p/session/")
    assert fake_stripe.calls("/v1/billing_portal/sessions")[-1].form == {
        "customer": customer,
        "return_url": CANCEL,
    }


async def test_checkout_input_and_keys_are_checked(
    billing_client: httpx.AsyncClient, session: AsyncSession, tenant: TenantKey
) -> None:
    unsold = await billing_client.post(
        "/v1/billing/checkout", json=checkout_body("starter"), headers=tenant.headers
    )
    assert unsold.status_code == 422
    assert unsold.json()["errors"][0]["field"] == "plan"
    bad_url = await billing_client.post(
        "/v1/billing/checkout",
        json={**checkout_body(), "success_url": "javascript:alert(1)"},
        headers=tenant.headers,
    )
    assert bad_url.status_code == 422
    assert "success_url" in bad_url.text
    test_key = await key_of(session, tenant, "test")
    refused = await billing_client.post(
        "/v1/billing/checkout", json=checkout_body(), headers=test_key.headers
    )
    assert refused.status_code == 403
    never = await billing_client.post(
        "/v1/billing/portal", json={"return_url": CANCEL}, headers=tenant.headers
    )
    assert never.status_code == 409  # no customer yet


async def test_overage_reports_carry_one_identifier_per_flush_and_bill_once(
    billing_client: httpx.AsyncClient,
    fake_stripe: FakeStripe,
    billing_settings: Settings,
    session: AsyncSession,
    tenant: TenantKey,
) -> None:
    async with stripe_client(billing_settings) as client:
        assert client is not None
        nothing = await service.report_overage(
            session,
            client,
            billing_settings,
            tenant_id=tenant.tenant_id,
            period="2026-12",
            flush_id="f1",
            quantity=3,
            now=utcnow(),
        )
        assert nothing is None  # no Stripe customer: nothing to bill
        started = await billing_client.post(
            "/v1/billing/checkout", json=checkout_body(), headers=tenant.headers
        )
        assert started.status_code == 201
        sent = [
            await service.report_overage(
                session,
                client,
                billing_settings,
                tenant_id=tenant.tenant_id,
                period="2026-12",
                flush_id=flush,
                quantity=3,
                now=utcnow(),
            )
            for flush in ("f1", "f1", "f2")  # f1 reported again: a retry
        ]
    mine = [
        c for c in fake_stripe.calls("/v1/billing/meter_events") if c.form["identifier"] in sent
    ]
    assert [c.form["identifier"] for c in mine] == [
        f"{tenant.tenant_id}:2026-12:f1",
        f"{tenant.tenant_id}:2026-12:f1",
        f"{tenant.tenant_id}:2026-12:f2",
    ]
    assert mine[0].form["event_name"] == "herald_overage"
    assert mine[0].form["payload[value]"] == "3"
    assert mine[0].form["payload[stripe_customer_id]"].startswith("cus_")
    billed = {
        i: e for i, e in fake_stripe.meter_events.items() if i.startswith(str(tenant.tenant_id))
    }
    assert len(billed) == 2  # Stripe keeps one event per identifier


async def test_without_stripe_keys_billing_is_off(
    client: httpx.AsyncClient, settings: Settings, tenant: TenantKey
) -> None:
    assert not billing.enabled(settings)
    async with stripe_client(settings) as none:
        assert none is None
    hook = await client.post("/webhooks/stripe", content=b"{}", headers={"Stripe-Signature": "t=1"})
    assert hook.status_code == 404
    assert hook.json()["type"].endswith("/billing_disabled")
    checkout = await client.post(
        "/v1/billing/checkout", json=checkout_body(), headers=tenant.headers
    )
    assert checkout.status_code == 409
    assert checkout.json()["type"].endswith("/billing_disabled")


def test_half_a_stripe_configuration_is_refused(settings: Settings) -> None:
    url = settings.database_url or ""
    with pytest.raises(SettingsError) as missing:
        settings_for(url, "redis://x", HERALD_STRIPE_SECRET_KEY="sk_test_1")
    assert missing.value.variable == "HERALD_STRIPE_WEBHOOK_SECRET"
    # Prices are named in the plans file alone: the variable that named them once stops
    # the process instead of leaving every plan unsold.
    with pytest.raises(SettingsError) as prices:
        settings_for(url, "redis://x", HERALD_STRIPE_PRICES="growth=price_1")
    assert prices.value.variable == "HERALD_STRIPE_PRICES"
    assert "stripe_price_id in the plans file" in str(prices.value)
