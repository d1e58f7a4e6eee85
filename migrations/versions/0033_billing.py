"""billing_accounts and stripe_events: Stripe subscriptions per tenant, and the webhook
events already applied

Revision ID: 0033_billing
Revises: 0032_usage
Create Date: 2026-12-05 10:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0033_billing"
down_revision = "0032_usage"
branch_labels = None
depends_on = None


def upgrade() -> None:
    stamp = sa.DateTime(timezone=True)
    op.create_table(
        "billing_accounts",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("customer_id", sa.String(255), nullable=True),
        sa.Column("subscription_id", sa.String(255), nullable=True),
        sa.Column("subscription_created", stamp, nullable=True),
        sa.Column("subscription_status", sa.String(32), nullable=True),
        sa.Column("subscription_item_id", sa.String(255), nullable=True),
        sa.Column("price_id", sa.String(255), nullable=True),
        sa.Column("plan", sa.String(32), nullable=True),
        sa.Column("subscription_event_at", stamp, nullable=True),
        sa.Column("invoice_event_at", stamp, nullable=True),
        sa.Column("past_due_since", stamp, nullable=True),
        sa.Column("created_at", stamp, server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", stamp, server_default=sa.func.now(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_billing_accounts_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_billing_accounts")),
        sa.UniqueConstraint("customer_id", name=op.f("uq_billing_accounts_customer_id")),
    )
    # The grace-period job reads only accounts with a failed payment outstanding.
    op.create_index(
        "ix_billing_accounts_past_due_since",
        "billing_accounts",
        ["past_due_since"],
        postgresql_where=sa.text("past_due_since IS NOT NULL"),
    )
    op.create_table(
        "stripe_events",
        sa.Column("id", sa.String(255), nullable=False),
        sa.Column("type", sa.String(100), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=True),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("created", stamp, nullable=False),
        sa.Column("received_at", stamp, server_default=sa.func.now(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_stripe_events_tenant_id_tenants"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stripe_events")),
    )
    op.create_index(op.f("ix_stripe_events_tenant_id"), "stripe_events", ["tenant_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_stripe_events_tenant_id"), table_name="stripe_events")
    op.drop_table("stripe_events")
    op.drop_index("ix_billing_accounts_past_due_since", table_name="billing_accounts")
    op.drop_table("billing_accounts")
