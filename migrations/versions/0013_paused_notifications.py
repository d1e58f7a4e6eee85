"""notifications may be paused: their messages wait until the notification is resumed

Revision ID: 0013_paused_notifications
Revises: 0012_topics
Create Date: 2026-12-14 08:00:00
"""

from __future__ import annotations

from alembic import op

revision = "0013_paused_notifications"
down_revision = "0012_topics"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_constraint(op.f("ck_notifications_status"), "notifications", type_="check")
    op.create_check_constraint(
        op.f("ck_notifications_status"),
        "notifications",
        "status IN ('accepted', 'dispatched', 'paused', 'cancelled', 'failed')",
    )


def downgrade() -> None:
    # Paused ones go on as they were: their messages are due again at once.
    op.execute(
        "UPDATE messages AS m SET next_attempt_at = now() FROM notifications AS n"
        " WHERE n.id = m.notification_id AND n.status = 'paused'"
        " AND m.status IN ('queued', 'retrying') AND m.next_attempt_at = 'infinity'"
    )
    op.execute(
        "UPDATE notifications SET status = CASE WHEN dispatched_at IS NULL THEN 'accepted'"
        " ELSE 'dispatched' END WHERE status = 'paused'"
    )
    op.drop_constraint(op.f("ck_notifications_status"), "notifications", type_="check")
    op.create_check_constraint(
        op.f("ck_notifications_status"),
        "notifications",
        "status IN ('accepted', 'dispatched', 'cancelled', 'failed')",
    )
