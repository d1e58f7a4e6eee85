"""notifications count their dispatch attempts, keep the last failure and when a dispatch
deferred for the tenant's render budget may run again

Revision ID: 0010_dispatch_failures
Revises: 0009_audit_hmac
Create Date: 2026-12-04 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_dispatch_failures"
down_revision = "0009_audit_hmac"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "notifications",
        sa.Column("dispatch_attempts", sa.Integer(), server_default="0", nullable=False),
    )
    op.add_column("notifications", sa.Column("dispatch_error", sa.Text(), nullable=True))
    op.add_column(
        "notifications", sa.Column("dispatch_after", sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    op.drop_column("notifications", "dispatch_after")
    op.drop_column("notifications", "dispatch_error")
    op.drop_column("notifications", "dispatch_attempts")
