"""POST /webhooks/stripe: signatures, replays, events out of order, and the grace period
after a failed payment."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import timedelta

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.models import AuditEntry
from app.billing.models import BillingAccount
from app.db import utcnow
from app.settings import Settings
from app.tenants.models import Tenant
from jobs import cron
from tests.integration.billing import stripe_events as events
from tests.integration.billing.conftest import PRICES, Webhooks, sign
from tests.support import TenantKey

DAY = 86_400


async def plan_of(session: AsyncSession, tenant_id: uuid.UUID) -> str:
    session.expire_all()
    plan = await session.scalar(select(Tenant.plan).where(Tenant.id == tenant_id))
    assert plan is not None
    return plan


async def plan_changes(session: AsyncSession, tenant_id: uuid.UUID) -> list[dict[str, object]]:
    entries = await session.scalars(
        select(AuditEntry.details)
        .where(AuditEntry.tenant_id == tenant_id, AuditEntry.action == "billing.plan_changed")
        .order_by(AuditEntry.seq)
    )
    return list(entries.all())


async def subscribe(webhooks: Webhooks, tenant: TenantKey, *, born: int) -> tuple[str, str]:
    """A completed checkout and its new growth subscription; (customer, subscription)."""
    customer, sub = f"cus_{uuid.uuid4().hex[:14]}", f"sub_{uuid.uuid4().hex[:20]}"
    done = await webhooks.post(events.checkout_completed(tenant.tenant_id, customer, sub))
    assert done.json() == {"received": True, "outcome": "applied"}
    created = events.subscription(
        "created", sub, customer, price=PRICES["growth"], born=born, created=born
    )
    assert (await webhooks.post(created)).json()["outcome"] == "applied"
    return customer, sub


async def test_a_signed_event_is_taken_and_a_forged_or_stale_one_refused(
    webhooks: Webhooks, billing_client: httpx.AsyncClient, session: AsyncSession, tenant: TenantKey
) -> None:
    now = int(time.time())
    customer, sub = f"cus_{uuid.uuid4().hex[:14]}", f"sub_{uuid.uuid4().hex[:20]}"
    body = json.dumps(events.checkout_completed(tenant.tenant_id, customer, sub))

    async def post(signature: str, payload: str = body) -> httpx.Response:
        return await billing_client.post(
            "/webhooks/stripe", content=payload, headers={"Stripe-Signature": signature}
        )

    wrong_secret = await post(sign(body, secret="whsec_someone_else"))
    assert wrong_secret.status_code == 400
    assert wrong_secret.json()["type"].endswith("/bad_signature")
    assert wrong_secret.headers["content-type"].startswith("application/problem+json")
    tampered = await post(sign(body), body.replace(customer, "cus_attacker"))
    assert tampered.status_code == 400
    assert (await post("")).status_code == 400
    assert (await post("t=abc,v1=00")).status_code == 400
    stale = await post(sign(body, timestamp=now - 301))
    assert stale.status_code == 400
    assert stale.json()["type"].endswith("/stale")
    account = await session.scalar(
        select(BillingAccount).where(BillingAccount.tenant_id == tenant.tenant_id)
    )
    assert account is None  # nothing refused changed anything

    for junk in ("[]", "{}", "not json", '{"id": "evt_1", "created": "yesterday"}'):
        unreadable = await post(sign(junk), junk)  # signed, yet no event
        assert unreadable.status_code == 400
        assert unreadable.json()["type"].endswith("/unparseable")

    within = await post(sign(body, timestamp=now - 290))
    assert within.status_code == 200
    assert within.json() == {"received": True, "outcome": "applied"}
    account = await session.scalar(
        select(BillingAccount).where(BillingAccount.tenant_id == tenant.tenant_id)
    )
    assert account is not None
    assert (account.customer_id, account.subscription_id) == (customer, sub)


async def test_subscription_sets_the_plan_once_however_often_stripe_repeats_it(
    webhooks: Webhooks, session: AsyncSession, tenant: TenantKey
) -> None:
    now = int(time.time())
    customer, sub = await subscribe(webhooks, tenant, born=now - 60)
    assert await plan_of(session, tenant.tenant_id) == "growth"

    upgrade = events.subscription(
        "updated", sub, customer, price=PRICES["enterprise"], born=now - 60, created=now - 30
    )
    first = await webhooks.post(upgrade)
    again = await webhooks.post(upgrade)  # Stripe retries, or sends twice
    assert first.json()["outcome"] == "applied"
    assert again.status_code == 200
    assert again.json()["outcome"] == "duplicate"
    assert await plan_of(session, tenant.tenant_id) == "enterprise"
    changes = await plan_changes(session, tenant.tenant_id)
    assert [(c["from"], c["to"]) for c in changes] == [
        ("free", "growth"),
        ("growth", "enterprise"),
    ]
    assert changes[1]["event"] == upgrade["id"]


async def test_an_older_update_arriving_late_is_ignored(
    webhooks: Webhooks, session: AsyncSession, tenant: TenantKey
) -> None:
    now = int(time.time())
    customer, sub = await subscribe(webhooks, tenant, born=now - 100)
    older = events.subscription(
        "updated", sub, customer, price=PRICES["growth"], born=now - 100, created=now - 50
    )
    newer = events.subscription(
        "updated", sub, customer, price=PRICES["enterprise"], born=now - 100, created=now - 20
    )
    assert (await webhooks.post(newer)).json()["outcome"] == "applied"
    assert (await webhooks.post(older)).json()["outcome"] == "out_of_order"
    assert await plan_of(session, tenant.tenant_id) == "enterprise"

    # The created event delivered last carries the first state: nothing newer.
    late_created = events.subscription(
        "created", sub, customer, price=PRICES["growth"], born=now - 100, created=now - 100
    )
    assert (await webhooks.post(late_created)).json()["outcome"] == "out_of_order"

    deleted = events.subscription(
        "deleted",
        sub,
        customer,
        price=PRICES["enterprise"],
        status="canceled",
        born=now - 100,
        created=now - 10,
    )
    assert (await webhooks.post(deleted)).json()["outcome"] == "applied"
    assert await plan_of(session, tenant.tenant_id) == "free"
    # An update of the canceled subscription, even with a later time, does not revive it.
    revived = events.subscription(
        "updated", sub, customer, price=PRICES["enterprise"], born=now - 100, created=now - 5
    )
    assert (await webhooks.post(revived)).json()["outcome"] == "out_of_order"
    assert await plan_of(session, tenant.tenant_id) == "free"

    # A new subscription replaces the old one; the old one's late events are ignored.
    new_sub = f"sub_{uuid.uuid4().hex[:20]}"
    renewed = events.subscription(
        "created", new_sub, customer, price=PRICES["growth"], born=now - 2, created=now - 2
    )
    assert (await webhooks.post(renewed)).json()["outcome"] == "applied"
    old_again = events.subscription(
        "updated", sub, customer, price=PRICES["enterprise"], born=now - 100, created=now
    )
    assert (await webhooks.post(old_again)).json()["outcome"] == "out_of_order"
    assert await plan_of(session, tenant.tenant_id) == "growth"


async def test_an_event_changes_only_the_tenant_of_its_customer(
    webhooks: Webhooks, session: AsyncSession, tenant: TenantKey, other_tenant: TenantKey
) -> None:
    now = int(time.time())
    customer, _ = await subscribe(webhooks, tenant, born=now - 10)
    # A subscription of the first tenant's customer claiming the other tenant in metadata.
    claim = events.subscription(
        "created",
        f"sub_{uuid.uuid4().hex[:20]}",
        customer,
        price=PRICES["enterprise"],
        born=now - 5,
        created=now - 5,
        metadata={"tenant_id": str(other_tenant.tenant_id)},
    )
    assert (await webhooks.post(claim)).json()["outcome"] == "applied"
    assert await plan_of(session, other_tenant.tenant_id) == "free"
    assert await plan_of(session, tenant.tenant_id) == "enterprise"

    unknown = events.subscription(
        "created",
        f"sub_{uuid.uuid4().hex[:20]}",
        f"cus_{uuid.uuid4().hex[:14]}",
        price=PRICES["enterprise"],
        born=now,
        created=now,
    )
    assert (await webhooks.post(unknown)).json()["outcome"] == "unmatched"


async def test_a_failed_payment_keeps_the_plan_for_the_grace_period_then_ends_it(
    webhooks: Webhooks,
    session: AsyncSession,
    billing_settings: Settings,
    tenant: TenantKey,
) -> None:
    now = int(time.time())
    customer, sub = await subscribe(webhooks, tenant, born=now - 3 * DAY)
    failed = events.invoice("invoice.payment_failed", customer, sub, created=now - DAY)
    assert (await webhooks.post(failed)).json()["outcome"] == "applied"
    assert await plan_of(session, tenant.tenant_id) == "growth"  # within the grace period
    # A second failure (Stripe's retry of the charge) does not restart the grace period.
    retried = events.invoice("invoice.payment_failed", customer, sub, created=now - 60)
    assert (await webhooks.post(retried)).json()["outcome"] == "applied"

    ctx = {"settings": billing_settings, "sessions": lambda: AsyncSession(session.bind)}
    assert await cron.end_billing_grace(ctx) == 0
    assert await plan_of(session, tenant.tenant_id) == "growth"
    # Seven days after the first failure the tenant is down to the default plan.
    later = utcnow() + timedelta(days=6, hours=1)
    assert await cron.end_billing_grace(ctx, now=later) == 1
    assert await plan_of(session, tenant.tenant_id) == "free"
    assert await cron.end_billing_grace(ctx, now=later) == 0  # once
    last = (await plan_changes(session, tenant.tenant_id))[-1]
    assert (last["from"], last["to"], last["reason"]) == ("growth", "free", "grace_period_ended")

    # The invoice is paid: the plan comes back; a failure older than that payment that
    # arrives after it changes nothing.
    paid = events.invoice("invoice.paid", customer, sub, created=now - 10)
    assert (await webhooks.post(paid)).json()["outcome"] == "applied"
    assert await plan_of(session, tenant.tenant_id) == "growth"
    late = events.invoice("invoice.payment_failed", customer, sub, created=now - 30)
    assert (await webhooks.post(late)).json()["outcome"] == "out_of_order"
    account = await session.scalar(
        select(BillingAccount)
        .where(BillingAccount.tenant_id == tenant.tenant_id)
        .execution_options(populate_existing=True)
    )
    assert account is not None and account.past_due_since is None


async def test_events_of_the_other_stripe_mode_or_types_not_handled_change_nothing(
    webhooks: Webhooks, session: AsyncSession, tenant: TenantKey
) -> None:
    now = int(time.time())
    customer, sub = await subscribe(webhooks, tenant, born=now - 10)
    live = events.subscription(
        "deleted", sub, customer, price=PRICES["growth"], born=now - 10, created=now
    )
    live["livemode"] = True  # the key configured is a test key
    assert (await webhooks.post(live)).json()["outcome"] == "ignored"
    other = events.event("customer.created", {"id": customer, "object": "customer"})
    assert (await webhooks.post(other)).json()["outcome"] == "ignored"
    assert await plan_of(session, tenant.tenant_id) == "growth"
    assert len(await plan_changes(session, tenant.tenant_id)) == 1  # the subscription's


async def test_the_same_event_delivered_twice_at_once_is_applied_once(
    webhooks: Webhooks, session: AsyncSession, tenant: TenantKey
) -> None:
    now = int(time.time())
    customer, sub = await subscribe(webhooks, tenant, born=now - 60)
    upgrade = events.subscription(
        "updated", sub, customer, price=PRICES["enterprise"], born=now - 60, created=now
    )
    answers = await asyncio.gather(*(webhooks.post(upgrade) for _ in range(4)))
    assert sorted(a.json()["outcome"] for a in answers) == ["applied"] + ["duplicate"] * 3
    assert len(await plan_changes(session, tenant.tenant_id)) == 2
    assert "cron:end_billing_grace" in {job.name for job in cron.cron_jobs()}
