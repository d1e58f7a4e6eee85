"""provider_configs may name the ses and postmark e-mail providers

Revision ID: 0023_ses_postmark
Revises: 0022_receipts_and_events
Create Date: 2026-12-05 07:20:00
"""

from __future__ import annotations

from alembic import op

revision = "0023_ses_postmark"
down_revision = "0022_receipts_and_events"
branch_labels = None
depends_on = None

BEFORE = "'smtp', 'sendgrid', 'mailgun', 'twilio', 'fcm', 'apns', 'webhook', 'sandbox'"
AFTER = (
    "'smtp', 'sendgrid', 'mailgun', 'ses', 'postmark', 'twilio', 'fcm', 'apns', 'webhook', "
    "'sandbox'"
)


def upgrade() -> None:
    op.drop_constraint(op.f("ck_provider_configs_provider"), "provider_configs", type_="check")
    op.create_check_constraint(
        op.f("ck_provider_configs_provider"), "provider_configs", f"provider IN ({AFTER})"
    )


def downgrade() -> None:
    # The code before this revision cannot send through these configs nor read their
    # credentials: they go, so that the narrower constraint holds. Their messages keep the
    # provider's name as text and are not touched.
    op.execute("DELETE FROM provider_configs WHERE provider IN ('ses', 'postmark')")
    op.drop_constraint(op.f("ck_provider_configs_provider"), "provider_configs", type_="check")
    op.create_check_constraint(
        op.f("ck_provider_configs_provider"), "provider_configs", f"provider IN ({BEFORE})"
    )
