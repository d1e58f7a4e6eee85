"""billing_accounts: what Stripe says about each tenant's subscription; stripe_events: the
ids of the webhook events already applied, so that a repeated delivery changes nothing."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, func, text
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
