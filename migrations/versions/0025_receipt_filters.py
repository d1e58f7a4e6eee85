"""receipts: indexes for the dashboard's filters by verdict and by provider config

Without them a filter on a rare verdict (bad_signature) reads every receipt of the tenant
before it finds a page.

Revision ID: 0025_receipt_filters
Revises: 0024_webhook_delivery_retention
Create Date: 2026-12-05 09:30:00
"""

from __future__ import annotations

from alembic import op

revision = "0025_receipt_filters"
down_revision = "0024_webhook_delivery_retention"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_receipts_tenant_id_mode_verdict_id", "receipts", ["tenant_id", "mode", "verdict", "id"]
    )
    op.create_index(
        "ix_receipts_tenant_id_mode_provider_config_id_id",
        "receipts",
        ["tenant_id", "mode", "provider_config_id", "id"],
    )


def downgrade() -> None:
    op.drop_index("ix_receipts_tenant_id_mode_provider_config_id_id", table_name="receipts")
    op.drop_index("ix_receipts_tenant_id_mode_verdict_id", table_name="receipts")
