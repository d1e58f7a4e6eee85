"""What a tenant's billing account allows, and the calls to Stripe a tenant's owner makes:
Checkout to subscribe (or the portal's confirm page to change plan), the Customer Portal,
overage reports to the billing meter, and the end of grace periods.

Every function takes the tenant as an argument and touches only that tenant's account. The
plan a tenant gets (tenants.plan) is derived in one place, `settle`, from what Stripe last
said about its subscription; every change of it is written to the audit log.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import stripe
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit import service as audit
from app.auth import roles
from app.billing.models import BillingAccount
from app.settings import Settings
from app.tenants import plans
from app.tenants.models import Tenant

# Subscription statuses that pay for the plan (past_due: within its grace period).
PAYING = ("active", "trialing", "past_due")
# Stripe's identifier of a meter event is at most 100 characters.
IDENTIFIER_MAX = 100


class BillingError(Exception):
    """A request billing cannot honour: `status` and `slug` for the problem answer, and the
    offending input `field` when there is one."""

    def __init__(self, status: int, slug: str, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.status, self.slug, self.detail, self.field = status, slug, detail, field


def default_plan(settings: Settings) -> str:
    """The plan of a tenant that pays for none (an unknown name configured: free)."""
    plan = settings.billing_default_plan
    return plan if plan in plans.plan_names() else "free"


def prices() -> dict[str, str]:
    """The plans for sale and their Stripe prices: each plan's `stripe_price_id` in the
    plans file, the only place prices are named."""
    return plans.catalogue().prices()


def plan_of_price(price_id: str | None) -> str | None:
    """The plan the plans file sells at this Stripe price, if any."""
    return plans.catalogue().plan_of_price(price_id)


def entitled_plan(settings: Settings, account: BillingAccount | None, now: datetime) -> str:
    """The plan the account pays for: its subscription's while that is paying and any failed
    payment is within the grace period; otherwise the default plan."""
    fallback = default_plan(settings)
    if account is None or account.subscription_status not in PAYING:
        return fallback
    if account.plan is None or account.plan not in plans.plan_names():
        return fallback
    grace = timedelta(days=settings.billing_grace_days)
    if account.past_due_since is not None and now >= account.past_due_since + grace:
        return fallback
    return account.plan


async def account_for_update(session: AsyncSession, *, tenant_id: uuid.UUID) -> BillingAccount:
    """The tenant's account, created if it has none, locked until the transaction ends: events
    and requests of one tenant apply one after the other."""
    await session.execute(
        insert(BillingAccount).values(tenant_id=tenant_id).on_conflict_do_nothing()
    )
    account = await session.scalar(
        select(BillingAccount)
        .where(BillingAccount.tenant_id == tenant_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    assert account is not None
    return account


async def get_account(session: AsyncSession, *, tenant_id: uuid.UUID) -> BillingAccount | None:
    return await session.scalar(select(BillingAccount).where(BillingAccount.tenant_id == tenant_id))


async def settle(
    session: AsyncSession,
    settings: Settings,
    account: BillingAccount,
    *,
    now: datetime,
    reason: str,
    details: dict[str, Any] | None = None,
) -> str | None:
    """Give the tenant the plan its account entitles it to; the new plan when it changed
    (audited as `billing.plan_changed`), else None."""
    tenant = await session.scalar(
        select(Tenant).where(Tenant.id == account.tenant_id).with_for_update()
    )
    if tenant is None:
        return None
    plan = entitled_plan(settings, account, now)
    if tenant.plan == plan:
        return None
    previous, tenant.plan = tenant.plan, plan
    await audit.append(
        session,
        tenant_id=tenant.id,
        actor="billing",
        action="billing.plan_changed",
        target=str(tenant.id),
        details={"from": previous, "to": plan, "reason": reason, **(details or {})},
    )
    return plan


@dataclass(frozen=True)
class Redirect:
    """Where to send the owner: a Stripe-hosted page."""

    url: str
    kind: Literal["checkout", "plan_change", "portal"]


async def _customer(
    session: AsyncSession, client: stripe.StripeClient, account: BillingAccount
) -> str:
    """The tenant's Stripe customer, created once (the idempotency key makes a retry after a
    lost answer return the same customer)."""
    if account.customer_id is not None:
        return account.customer_id
    tenant = await session.scalar(select(Tenant).where(Tenant.id == account.tenant_id))
    assert tenant is not None
    customer = await client.v1.customers.create_async(
        {"name": tenant.name, "metadata": {"tenant_id": str(tenant.id)}},
        {"idempotency_key": f"herald-customer-{tenant.id}"},
    )
    account.customer_id = customer.id
    await session.flush()
    return customer.id


async def start_checkout(
    session: AsyncSession,
    client: stripe.StripeClient,
    settings: Settings,
    *,
    tenant_id: uuid.UUID,
    plan: str,
    success_url: str,
    cancel_url: str,
    actor: str,
    role: str | None = None,
) -> Redirect:
    """Where the owner pays for `plan`: a Checkout Session in subscription mode, or, when the
    tenant already has a paying subscription, the portal's page confirming the change of its
    price (a second subscription would bill twice). `role`: the acting dashboard member's
    (only owners manage billing; None for an API key). The caller commits."""
    roles.require(role, "manage_billing")
    for_sale = prices()
    price = for_sale.get(plan)
    if price is None:
        sold = ", ".join(for_sale) or "none"
        raise BillingError(422, "validation_error", f"plan: plans for sale: {sold}", "plan")
    account = await account_for_update(session, tenant_id=tenant_id)
    customer = await _customer(session, client, account)
    if account.subscription_status in PAYING and account.subscription_id is not None:
        if account.plan == plan:
            raise BillingError(
                409,
                "conflict",
                f"The subscription is already for the {plan} plan; its payment is managed "
                "in the Customer Portal.",
            )
        if account.subscription_item_id is None:
            raise BillingError(409, "conflict", "The subscription's plan item is not known yet.")
        portal = await client.v1.billing_portal.sessions.create_async(
            {
                "customer": customer,
                "return_url": success_url,
                "flow_data": {
                    "type": "subscription_update_confirm",
                    "subscription_update_confirm": {
                        "subscription": account.subscription_id,
                        "items": [{"id": account.subscription_item_id, "price": price}],
                    },
                    "after_completion": {
                        "type": "redirect",
                        "redirect": {"return_url": success_url},
                    },
                },
            }
        )
        redirect = Redirect(portal.url, "plan_change")
    else:
        metadata = {"tenant_id": str(tenant_id), "plan": plan}
        checkout = await client.v1.checkout.sessions.create_async(
            {
                "mode": "subscription",
                "customer": customer,
                "client_reference_id": str(tenant_id),
                "line_items": [{"price": price, "quantity": 1}],
                "success_url": success_url,
                "cancel_url": cancel_url,
                "metadata": metadata,
                "subscription_data": {"metadata": metadata},
            }
        )
        if checkout.url is None:
            raise BillingError(
                502, "stripe_error", "Stripe returned a Checkout Session without URL."
            )
        redirect = Redirect(checkout.url, "checkout")
    await audit.append(
        session,
        tenant_id=tenant_id,
        actor=actor,
        action="billing.checkout_started",
        target=str(tenant_id),
        details={"plan": plan, "kind": redirect.kind},
    )
    return redirect


async def portal_url(
    session: AsyncSession,
    client: stripe.StripeClient,
    *,
    tenant_id: uuid.UUID,
    return_url: str,
    role: str | None = None,
) -> str:
    """A Customer Portal session of the tenant's Stripe customer (invoices, payment method,
    plan, cancellation); `role` as for start_checkout."""
    roles.require(role, "manage_billing")
    account = await get_account(session, tenant_id=tenant_id)
    if account is None or account.customer_id is None:
        raise BillingError(
            409, "conflict", "The tenant has no billing account yet: subscribe first."
        )
    portal = await client.v1.billing_portal.sessions.create_async(
        {"customer": account.customer_id, "return_url": return_url}
    )
    return portal.url


def overage_identifier(tenant_id: uuid.UUID, period: str, flush_id: str) -> str:
    """The meter event's identifier: one per tenant, period and flush, so that Stripe drops a
    report sent again (a retry, a re-run flush) instead of billing it twice."""
    identifier = f"{tenant_id}:{period}:{flush_id}"
    if len(identifier) > IDENTIFIER_MAX:
        raise ValueError(f"identifier longer than {IDENTIFIER_MAX} characters: {identifier!r}")
    return identifier


async def report_overage(
    session: AsyncSession,
    client: stripe.StripeClient,
    settings: Settings,
    *,
    tenant_id: uuid.UUID,
    period: str,
    flush_id: str,
    quantity: int,
    now: datetime,
) -> str | None:
    """Report `quantity` units of overage to the billing meter (HERALD_STRIPE_METER_EVENT)
    for the tenant's customer, as of `now` (the event's timestamp); the identifier sent, or
    None when there is nothing to bill (no quantity, or no Stripe customer).

    Stripe refuses an identifier it already holds (for at least 24 hours): that refusal says
    the report was made before, whose answer was lost to us, and counts as reported. Any
    other Stripe error is raised."""
    identifier = overage_identifier(tenant_id, period, flush_id)
    if quantity <= 0:
        return None
    account = await get_account(session, tenant_id=tenant_id)
    if account is None or account.customer_id is None:
        return None
    try:
        await client.v1.billing.meter_events.create_async(
            {
                "event_name": settings.stripe_meter_event,
                "payload": {"stripe_customer_id": account.customer_id, "value": str(quantity)},
                "identifier": identifier,
                "timestamp": int(now.timestamp()),
            }
        )
    except stripe.InvalidRequestError as error:
        if not already_reported(error):
            raise
    return identifier


def already_reported(error: stripe.StripeError) -> bool:
    """Whether Stripe refused a meter event because it holds one with that identifier: a 400
    `invalid_request_error` "An event already exists with identifier …" (no error code sets
    it apart; Stripe also answers `Stripe-Should-Retry: false`)."""
    message = error.user_message or ""
    return error.http_status == 400 and "already exists with identifier" in message


async def end_expired_grace(
    session: AsyncSession, settings: Settings, *, now: datetime, limit: int = 500
) -> int:
    """Move tenants whose failed payment is older than the grace period to the default plan;
    how many changed. Their accounts stay past due: a later paid invoice restores the plan."""
    cutoff = now - timedelta(days=settings.billing_grace_days)
    # The partial index on past_due_since holds only the accounts with a payment outstanding;
    # those already on the default plan are left out, or they would fill every batch.
    accounts = await session.scalars(
        select(BillingAccount)
        .join(Tenant, Tenant.id == BillingAccount.tenant_id)
        .where(BillingAccount.past_due_since <= cutoff, Tenant.plan != default_plan(settings))
        .order_by(BillingAccount.past_due_since)
        .limit(limit)
        .with_for_update(of=BillingAccount, skip_locked=True)
    )
    changed = 0
    for account in accounts.all():
        assert account.past_due_since is not None
        since = {"past_due_since": account.past_due_since.isoformat()}
        plan = await settle(
            session, settings, account, now=now, reason="grace_period_ended", details=since
        )
        changed += plan is not None
    return changed
