"""retry window start on messages; tenants' default locale; trace context on notifications

Revision ID: 0007_budgets_locales_traces
Revises: 0006_reliability
Create Date: 2026-12-01 08:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_budgets_locales_traces"
down_revision = "0006_reliability"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "messages", sa.Column("retry_window_from", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column("tenants", sa.Column("default_locale", sa.String(length=35), nullable=True))
    op.add_column("notifications", sa.Column("trace_context", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("notifications", "trace_context")
    op.drop_column("tenants", "default_locale")
    op.drop_column("messages", "retry_window_from")
