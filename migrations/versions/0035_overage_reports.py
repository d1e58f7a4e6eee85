"""overage_reports: the outbox of overage to report to Stripe's billing meter, written in
the transaction that applies a usage flush

Revision ID: 0035_overage_reports
Revises: 0034_usage_warnings
Create Date: 2026-12-05 12:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0035_overage_reports"
down_revision = "0034_usage_warnings"
branch_labels = None
depends_on = None


def upgrade() -> None:
    stamp = sa.DateTime(timezone=True)
    op.create_table(
        "overage_reports",
        sa.Column("identifier", sa.String(100), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("period", sa.String(7), nullable=False),
        sa.Column("flush_id", sa.String(64), nullable=False),
        sa.Column("quantity", sa.BigInteger(), nullable=False),
        sa.Column("created_at", stamp, server_default=sa.func.now(), nullable=False),
        sa.Column("reported_at", stamp, nullable=True),
        sa.Column("failed_at", stamp, nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_attempt_at", stamp, server_default=sa.func.now(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.CheckConstraint("quantity > 0", name=op.f("ck_overage_reports_quantity")),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_overage_reports_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("identifier", name=op.f("pk_overage_reports")),
    )
    op.create_index(op.f("ix_overage_reports_tenant_id"), "overage_reports", ["tenant_id"])
    # The reporter reads only the reports still to send, oldest due first.
    op.create_index(
        "ix_overage_reports_due",
        "overage_reports",
        ["next_attempt_at"],
        postgresql_where=sa.text("reported_at IS NULL AND failed_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_overage_reports_due", table_name="overage_reports")
    op.drop_index(op.f("ix_overage_reports_tenant_id"), table_name="overage_reports")
    op.drop_table("overage_reports")
