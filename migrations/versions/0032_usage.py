"""usage_counts and usage_flushes: messages counted per tenant, month and channel; plans
move to the operator's plans file, so tenants.plan loses its fixed list

Revision ID: 0032_usage
Revises: 0031_sso_configs
Create Date: 2026-12-05 10:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0032_usage"
down_revision = "0031_sso_configs"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_constraint(op.f("ck_tenants_plan"), "tenants", type_="check")
    op.create_table(
        "usage_counts",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("period", sa.Date(), nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("count", sa.BigInteger(), server_default="0", nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_usage_counts_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", "period", "channel", name=op.f("pk_usage_counts")),
    )
    op.create_table(
        "usage_flushes",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column(
            "flushed_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_flushes")),
    )


def downgrade() -> None:
    op.drop_table("usage_flushes")
    op.drop_table("usage_counts")
    # Tenants on a plan the old list lacks (pro, scale, the operator's) go back to free.
    op.execute(
        "UPDATE tenants SET plan = 'free' "
        "WHERE plan NOT IN ('free', 'starter', 'growth', 'enterprise')"
    )
    op.create_check_constraint(
        op.f("ck_tenants_plan"), "tenants", "plan IN ('free', 'starter', 'growth', 'enterprise')"
    )
