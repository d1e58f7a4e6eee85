"""a broadcast larger than the quota left: sent up to the quota, or refused whole, as the
tenant chooses (tenants.on_quota_exceeded) or the notification says
(notifications.on_quota_exceeded); a refused notification ends `refused`, and one whose
audience is held against the quota at dispatch is marked (notifications.quota_held)

Revision ID: 0036_quota_overflow
Revises: 0035_overage_reports
Create Date: 2026-12-06 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0036_quota_overflow"
down_revision = "0035_overage_reports"
branch_labels = None
depends_on = None

CHOICES = "('send_partial', 'refuse')"


def upgrade() -> None:
    op.add_column(
        "tenants",
        sa.Column(
            "on_quota_exceeded",
            sa.String(16),
            server_default="send_partial",
            nullable=False,
        ),
    )
    op.create_check_constraint(
        op.f("ck_tenants_on_quota_exceeded"), "tenants", f"on_quota_exceeded IN {CHOICES}"
    )
    op.add_column("notifications", sa.Column("on_quota_exceeded", sa.String(16), nullable=True))
    op.create_check_constraint(
        op.f("ck_notifications_on_quota_exceeded"),
        "notifications",
        f"on_quota_exceeded IN {CHOICES}",
    )
    op.add_column(
        "notifications",
        sa.Column("quota_held", sa.Boolean(), server_default=sa.text("false"), nullable=False),
    )
    op.drop_constraint(op.f("ck_notifications_status"), "notifications", type_="check")
    op.create_check_constraint(
        op.f("ck_notifications_status"),
        "notifications",
        "status IN ('accepted', 'dispatched', 'paused', 'cancelled', 'failed', 'refused')",
    )


def downgrade() -> None:
    # A refused notification wrote no message: it reads as one that failed, with its reason
    # kept in problems.
    op.execute("UPDATE notifications SET status = 'failed' WHERE status = 'refused'")
    op.drop_constraint(op.f("ck_notifications_status"), "notifications", type_="check")
    op.create_check_constraint(
        op.f("ck_notifications_status"),
        "notifications",
        "status IN ('accepted', 'dispatched', 'paused', 'cancelled', 'failed')",
    )
    op.drop_column("notifications", "quota_held")
    op.drop_constraint(op.f("ck_notifications_on_quota_exceeded"), "notifications", type_="check")
    op.drop_column("notifications", "on_quota_exceeded")
    op.drop_constraint(op.f("ck_tenants_on_quota_exceeded"), "tenants", type_="check")
    op.drop_column("tenants", "on_quota_exceeded")
