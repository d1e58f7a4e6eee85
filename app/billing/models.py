"""billing_accounts: what Stripe says about each tenant's subscription; stripe_events: the
ids of the webhook events already applied, so that a repeated delivery changes nothing;
overage_reports: the outbox of overage to report to Stripe's billing meter."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, String, Text, func, text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base


class BillingAccount(Base):
    """One per tenant that ever started a checkout. `plan` is the plan Stripe's subscription
    pays for; tenants.plan is what the tenant gets (the default plan once grace ran out)."""

    __tablename__ = "billing_accounts"
    __table_args__ = (
        Index(
            "ix_billing_accounts_past_due_since",
            "past_due_since",
            postgresql_where=text("past_due_since IS NOT NULL"),
        ),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    customer_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    subscription_id: Mapped[str | None] = mapped_column(String(255))
    # The subscription's own creation time: a newer subscription replaces an older one, and
    # events of the older one arriving late are ignored.
    subscription_created: Mapped[datetime | None]
    subscription_status: Mapped[str | None] = mapped_column(String(32))
    subscription_item_id: Mapped[str | None] = mapped_column(String(255))
    price_id: Mapped[str | None] = mapped_column(String(255))
    plan: Mapped[str | None] = mapped_column(String(32))
    # `created` of the last subscription event applied, and of the last invoice event: an
    # event older than these arrived out of order and is ignored.
    subscription_event_at: Mapped[datetime | None]
    invoice_event_at: Mapped[datetime | None]
    # When the first failed payment not yet followed by a paid invoice happened (a partial
    # index, ix_billing_accounts_past_due_since, serves the grace-period job).
    past_due_since: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())


class StripeEvent(Base):
    """A webhook event applied (or found to concern no tenant): never applied again."""

    __tablename__ = "stripe_events"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    type: Mapped[str] = mapped_column(String(100))
    tenant_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("tenants.id", ondelete="SET NULL"), index=True
    )
    outcome: Mapped[str] = mapped_column(String(32))
    created: Mapped[datetime]  # the event's own time at Stripe
    received_at: Mapped[datetime] = mapped_column(server_default=func.now())


class OverageReport(Base):
    """Messages one usage flush took a tenant past its plan's quota in one period, to be
    reported to Stripe's billing meter (app/billing/overage.py). Written in the flush's own
    transaction, so exactly once per flush; `identifier` is the meter event's, the same on
    every attempt, so Stripe bills a report sent twice once.

    Due while `reported_at` and `failed_at` are NULL and `next_attempt_at` has come; a report
    taken by a worker has `next_attempt_at` moved a lease ahead, so another worker leaves it."""

    __tablename__ = "overage_reports"
    __table_args__ = (
        CheckConstraint("quantity > 0", name="quantity"),
        Index(
            "ix_overage_reports_due",
            "next_attempt_at",
            postgresql_where=text("reported_at IS NULL AND failed_at IS NULL"),
        ),
    )

    identifier: Mapped[str] = mapped_column(String(100), primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), index=True
    )
    period: Mapped[str] = mapped_column(String(7))  # YYYY-MM, as in the identifier
    flush_id: Mapped[str] = mapped_column(String(64))  # usage_flushes.id
    quantity: Mapped[int] = mapped_column(BigInteger)  # messages past the quota
    # When the flush committed: the meter event's timestamp (Stripe takes 35 days back).
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    reported_at: Mapped[datetime | None]
    # Given up for good (too old for Stripe, no Stripe customer): `last_error` says why.
    failed_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(server_default="0")
    next_attempt_at: Mapped[datetime] = mapped_column(server_default=func.now())
    last_error: Mapped[str | None] = mapped_column(Text)
