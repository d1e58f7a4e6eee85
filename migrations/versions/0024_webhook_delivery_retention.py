"""webhook_deliveries.retain_until: delivery logs kept for the plan's log retention

Deliveries made before it keep 30 days from their creation.

Revision ID: 0024_webhook_delivery_retention
Revises: 0023_ses_postmark
Create Date: 2026-12-05 07:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0024_webhook_delivery_retention"
down_revision = "0023_ses_postmark"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "webhook_deliveries", sa.Column("retain_until", sa.DateTime(timezone=True), nullable=True)
    )
    op.execute("UPDATE webhook_deliveries SET retain_until = created_at + interval '30 days'")
    op.alter_column("webhook_deliveries", "retain_until", nullable=False)
    op.create_index(
        "ix_webhook_deliveries_expired",
        "webhook_deliveries",
        ["retain_until"],
        postgresql_where=sa.text("status <> 'pending'"),
    )


def downgrade() -> None:
    op.drop_index(
        "ix_webhook_deliveries_expired",
        table_name="webhook_deliveries",
        postgresql_where=sa.text("status <> 'pending'"),
    )
    op.drop_column("webhook_deliveries", "retain_until")
