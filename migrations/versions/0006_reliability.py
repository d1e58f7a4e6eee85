"""kill switches and retry policy on tenants; rate-limited attempts; sweeper and DLQ indexes

Revision ID: 0006_reliability
Revises: 0005_notifications
Create Date: 2026-11-22 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006_reliability"
down_revision = "0005_notifications"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for column in ("kill_switches", "retry_policy"):
        op.add_column(
            "tenants",
            sa.Column(
                column,
                postgresql.JSONB(astext_type=sa.Text()),
                server_default="{}",
                nullable=False,
            ),
        )
    op.add_column(
        "messages",
        sa.Column("rate_limited_attempts", sa.Integer(), server_default="0", nullable=False),
    )
    op.create_index(
        "ix_messages_claims",
        "messages",
        ["claimed_until"],
        unique=False,
        postgresql_where=sa.text("status = 'sending'"),
    )
    op.create_index(
        "ix_messages_failed",
        "messages",
        ["tenant_id", "id"],
        unique=False,
        postgresql_where=sa.text("status = 'failed'"),
    )


def downgrade() -> None:
    op.drop_index("ix_messages_failed", table_name="messages")
    op.drop_index("ix_messages_claims", table_name="messages")
    op.drop_column("messages", "rate_limited_attempts")
    op.drop_column("tenants", "retry_policy")
    op.drop_column("tenants", "kill_switches")
