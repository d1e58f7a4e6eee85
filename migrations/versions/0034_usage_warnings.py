"""usage_warnings: the 80 % and 100 % thresholds of a monthly quota each tenant reached, and
when its owners were mailed about them

Revision ID: 0034_usage_warnings
Revises: 0033_billing
Create Date: 2026-12-06 09:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0034_usage_warnings"
down_revision = "0033_billing"
branch_labels = None
depends_on = None


def upgrade() -> None:
    stamp = sa.DateTime(timezone=True)
    op.create_table(
        "usage_warnings",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("period", sa.Date(), nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("threshold", sa.SmallInteger(), nullable=False),
        sa.Column("used", sa.BigInteger(), nullable=False),
        sa.Column("quota", sa.BigInteger(), nullable=False),
        sa.Column("created_at", stamp, server_default=sa.func.now(), nullable=False),
        sa.Column("mailed_at", stamp, nullable=True),
        sa.CheckConstraint("threshold IN (80, 100)", name=op.f("ck_usage_warnings_threshold")),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_usage_warnings_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "tenant_id", "period", "channel", "threshold", name=op.f("pk_usage_warnings")
        ),
    )
    op.create_index(
        "ix_usage_warnings_unmailed",
        "usage_warnings",
        ["period"],
        postgresql_where=sa.text("mailed_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_usage_warnings_unmailed", table_name="usage_warnings")
    op.drop_table("usage_warnings")
