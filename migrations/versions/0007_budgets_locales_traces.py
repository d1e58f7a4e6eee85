"""retry window start on messages; tenants' default locale; trace context and criticality
on notifications

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
    op.add_column("notifications", sa.Column("critical", sa.Boolean(), nullable=True))
    # Notifications with messages still to send: a drop_noncritical switch must spare the
    # critical ones (a tenant's category row, else the built-in `security`).
    op.execute(
        """
        UPDATE notifications AS n
           SET critical = coalesce(
                 (SELECT c.critical FROM categories AS c
                   WHERE c.tenant_id = n.tenant_id AND c.key = n.category),
                 n.category = 'security')
         WHERE EXISTS (SELECT 1 FROM messages AS m
                        WHERE m.notification_id = n.id
                          AND m.status IN ('queued', 'retrying', 'sending'))
        """
    )


def downgrade() -> None:
    op.drop_column("notifications", "critical")
    op.drop_column("notifications", "trace_context")
    op.drop_column("tenants", "default_locale")
    op.drop_column("messages", "retry_window_from")
