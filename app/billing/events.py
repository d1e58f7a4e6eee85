"""Stripe's webhook events: verified with the SDK (`Stripe-Signature`, 300 s tolerance),
applied once each, and in the order things happened rather than the order they arrived.

- Once: the event id is inserted into stripe_events in the transaction that applies it; a
  repeated delivery finds it there (or waits for the first one's transaction, then finds it)
  and changes nothing.
- In order: Stripe does not promise delivery order. Between subscriptions of a tenant, the
  subscription's own `created` decides (a newer one replaces an older, whose late events
  are ignored). Within one subscription, an event older (`created`) than the last one
  applied is ignored, a `created` event of a subscription already known carries nothing
  newer, and a deleted (canceled) subscription never comes back. Invoice events are ordered
  among themselves the same way, so a late `invoice.payment_failed` does not undo a paid
  invoice that came after it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import stripe
import structlog
from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.billing.models import BillingAccount, StripeEvent
from app.billing.service import account_for_update, plan_of_price, prices, settle
from app.settings import Settings
from app.tenants.models import Tenant

log = structlog.get_logger(__name__)

TOLERANCE = 300  # seconds between Stripe's signature timestamp and now
HANDLED = (
    "checkout.session.completed",
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "invoice.paid",
    "invoice.payment_failed",
)
ENDED = ("canceled", "incomplete_expired")  # a subscription in these never pays again


class WebhookRefused(Exception):
    """The request is not a verified Stripe event: `slug` bad_signature, stale or unparseable."""

    def __init__(self, slug: str, detail: str) -> None:
        super().__init__(detail)
        self.slug, self.detail = slug, detail


@dataclass(frozen=True)
class Received:
    event_id: str
    type: str
    outcome: str  # applied | duplicate | out_of_order | unmatched | ignored
    tenant_id: uuid.UUID | None = None
    plan: str | None = None  # the tenant's new plan, when it changed


def verify(settings: Settings, payload: bytes, signature: str | None) -> dict[str, Any]:
    """The event, if `signature` is Stripe's over `payload` with the endpoint's secret and
    its timestamp is at most TOLERANCE seconds old; WebhookRefused otherwise."""
    try:
        event = stripe.Webhook.construct_event(
            payload,
            signature,
            settings.stripe_webhook_secret,
            tolerance=TOLERANCE,
            api_key=settings.stripe_secret_key,
        )
    except stripe.SignatureVerificationError as error:
        message = str(error.user_message or error)
        slug = "stale" if message.startswith("Timestamp outside") else "bad_signature"
        raise WebhookRefused(slug, message) from None
    except (ValueError, AttributeError, TypeError):  # not UTF-8, not JSON, not an object
        raise WebhookRefused("unparseable", "The body is not a Stripe event.") from None
    data: dict[str, Any] = event.to_dict()
    if not isinstance(data.get("id"), str) or not isinstance(data.get("created"), int):
        raise WebhookRefused("unparseable", "The event has no id or created time.")
    return data


def _at(seconds: Any) -> datetime | None:
    return datetime.fromtimestamp(seconds, UTC) if isinstance(seconds, int) else None


def _live_key(settings: Settings) -> bool:
    return (settings.stripe_secret_key or "")[3:8] == "live_"


async def apply(
    session: AsyncSession, settings: Settings, event: dict[str, Any], *, now: datetime
) -> Received:
    """Apply a verified event in the caller's transaction (the caller commits)."""
    event_id, kind = event["id"], str(event.get("type"))
    created = _at(event["created"])
    assert created is not None
    fresh = await session.scalar(
        insert(StripeEvent)
        .values(id=event_id, type=kind[:100], outcome="received", created=created)
        .on_conflict_do_nothing()
        .returning(StripeEvent.id)
    )
    if fresh is None:
        return Received(event_id, kind, "duplicate")
    received = await _dispatch(session, settings, event, kind, created, now)
    await session.execute(
        update(StripeEvent)
        .where(StripeEvent.id == event_id)
        .values(outcome=received.outcome, tenant_id=received.tenant_id)
    )
    log.info(
        "stripe event",
        event_id=event_id,
        type=kind,
        outcome=received.outcome,
        tenant_id=str(received.tenant_id) if received.tenant_id else None,
        plan=received.plan,
    )
    return received


async def _dispatch(
    session: AsyncSession,
    settings: Settings,
    event: dict[str, Any],
    kind: str,
    created: datetime,
    now: datetime,
) -> Received:
    event_id = event["id"]
    obj = (event.get("data") or {}).get("object") or {}
    if kind not in HANDLED or not isinstance(obj, dict):
        return Received(event_id, kind, "ignored")
    if bool(event.get("livemode")) != _live_key(settings):
        # An event of the other mode's account: an endpoint configured with the wrong secret
        # pair, never a reason to change a tenant's plan.
        return Received(event_id, kind, "ignored")
    account = await _account_of(session, obj, kind)
    if account is None:
        return Received(event_id, kind, "unmatched")
    tenant_id = account.tenant_id
    if kind == "checkout.session.completed":
        _link_checkout(account, obj)
        return Received(event_id, kind, "applied", tenant_id)
    if kind.startswith("customer.subscription."):
        if not _apply_subscription(account, obj, kind, created):
            return Received(event_id, kind, "out_of_order", tenant_id)
    elif not _apply_invoice(account, obj, kind, created):
        return Received(event_id, kind, "out_of_order", tenant_id)
    await session.flush()
    plan = await settle(
        session, settings, account, now=now, reason=kind, details={"event": event_id}
    )
    return Received(event_id, kind, "applied", tenant_id, plan)


async def _account_of(
    session: AsyncSession, obj: dict[str, Any], kind: str
) -> BillingAccount | None:
    """The locked account the object belongs to: by its Stripe customer, else (a checkout or
    subscription Herald started) by the tenant id Herald put on it."""
    customer = obj.get("customer")
    if isinstance(customer, dict):
        customer = customer.get("id")
    if isinstance(customer, str):
        tenant_id = await session.scalar(
            select(BillingAccount.tenant_id).where(BillingAccount.customer_id == customer)
        )
        if tenant_id is not None:
            return await account_for_update(session, tenant_id=tenant_id)
    if kind.startswith("invoice."):
        return None
    metadata = obj.get("metadata") or {}
    claimed = obj.get("client_reference_id") or metadata.get("tenant_id")
    try:
        tenant_id = uuid.UUID(str(claimed))
    except ValueError:
        return None
    if await session.scalar(select(Tenant.id).where(Tenant.id == tenant_id)) is None:
        return None
    account = await account_for_update(session, tenant_id=tenant_id)
    if isinstance(customer, str) and account.customer_id not in (None, customer):
        return None  # the tenant pays through another customer: not this one's event
    if isinstance(customer, str) and account.customer_id is None:
        account.customer_id = customer
    return account


def _link_checkout(account: BillingAccount, session: dict[str, Any]) -> None:
    subscription = session.get("subscription")
    if isinstance(subscription, dict):
        subscription = subscription.get("id")
    # Only while no subscription state is known: the subscription's own events decide after.
    if isinstance(subscription, str) and account.subscription_created is None:
        account.subscription_id = subscription


def _apply_subscription(
    account: BillingAccount,
    subscription: dict[str, Any],
    kind: str,
    at: datetime,
) -> bool:
    """Record the subscription's state unless the event is older than what is known."""
    sub_id, born = subscription.get("id"), _at(subscription.get("created"))
    if not isinstance(sub_id, str) or born is None:
        return False
    known = account.subscription_created is not None
    if known and account.subscription_id != sub_id:
        assert account.subscription_created is not None
        if born <= account.subscription_created:
            return False  # an older subscription's late event
    elif known:
        if account.subscription_status in ENDED or kind == "customer.subscription.created":
            return False
        if account.subscription_event_at is not None and at < account.subscription_event_at:
            return False
    status = "canceled" if kind == "customer.subscription.deleted" else subscription.get("status")
    item_id, price_id = _plan_item(subscription)
    account.subscription_id = sub_id
    account.subscription_created = born
    account.subscription_status = str(status)[:32] if status else None
    account.subscription_item_id = item_id
    account.price_id = price_id
    account.plan = plan_of_price(price_id)
    account.subscription_event_at = at
    if account.subscription_status in ENDED:
        account.past_due_since = None  # nothing left to pay for
    return True


def _plan_item(subscription: dict[str, Any]) -> tuple[str | None, str | None]:
    """The item whose price is a plan's (stripe_price_id in the plans file; others, such as
    the metered overage price, are not the plan); else the first item."""
    items = ((subscription.get("items") or {}).get("data")) or []
    plan_prices = set(prices().values())
    found: tuple[str | None, str | None] = (None, None)
    for item in items:
        price = item.get("price") or {}
        price_id = price.get("id") if isinstance(price, dict) else price
        if price_id in plan_prices:
            return item.get("id"), price_id
        if found == (None, None):
            found = (item.get("id"), price_id)
    return found


def _invoice_subscription(invoice: dict[str, Any]) -> str | None:
    # API versions from 2025-03 carry it under parent.subscription_details; older ones at top.
    details = ((invoice.get("parent") or {}).get("subscription_details")) or {}
    subscription = details.get("subscription") or invoice.get("subscription")
    if isinstance(subscription, dict):
        subscription = subscription.get("id")
    return subscription if isinstance(subscription, str) else None


def _apply_invoice(
    account: BillingAccount, invoice: dict[str, Any], kind: str, at: datetime
) -> bool:
    subscription = _invoice_subscription(invoice)
    if subscription is not None and account.subscription_id not in (None, subscription):
        return False  # another (older) subscription's invoice
    if account.invoice_event_at is not None and at < account.invoice_event_at:
        return False
    account.invoice_event_at = at
    if kind == "invoice.paid":
        account.past_due_since = None
    elif account.past_due_since is None:
        account.past_due_since = at  # grace counts from the first failure
    return True
