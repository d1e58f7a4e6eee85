"""Indexes for the filters of receipts and webhook delivery lists

receipts by verdict, by provider config, or both; an endpoint's deliveries by status.
Without them a filter on a rare value (bad_signature, failed) reads every row of the tenant
or endpoint before it fills a page.

Revision ID: 0030_dashboard_list_filters
Revises: 0029_recipient_search_order
Create Date: 2026-12-05 09:30:00
"""

from __future__ import annotations

from alembic import op

revision = "0030_dashboard_list_filters"
down_revision = "0029_recipient_search_order"
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
    op.create_index(
        "ix_receipts_tenant_id_mode_provider_config_id_verdict_id",
        "receipts",
        ["tenant_id", "mode", "provider_config_id", "verdict", "id"],
    )
    op.create_index(
        "ix_webhook_deliveries_endpoint_id_status_id",
        "webhook_deliveries",
        ["endpoint_id", "status", "id"],
    )


def downgrade() -> None:
    op.drop_index("ix_webhook_deliveries_endpoint_id_status_id", table_name="webhook_deliveries")
    op.drop_index("ix_receipts_tenant_id_mode_provider_config_id_verdict_id", table_name="receipts")
    op.drop_index("ix_receipts_tenant_id_mode_provider_config_id_id", table_name="receipts")
    op.drop_index("ix_receipts_tenant_id_mode_verdict_id", table_name="receipts")
