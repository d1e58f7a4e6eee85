"""Indexes the delivery log's filters read: a notification, a recipient, a settled status

Revision ID: 0028_delivery_log_indexes
Revises: 0026_member_invites_resets
Create Date: 2026-12-05 09:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0028_delivery_log_indexes"
down_revision = "0026_member_invites_resets"
branch_labels = None
depends_on = None

# The dashboard's delivery log (app/notifications/log.py) shows a tenant's messages newest
# first, 50 at a time, filtered by status, channel, provider, error class, recipient,
# notification or template. Without these, a filter matching few of a tenant's million
# messages walked ix_messages_tenant_id_mode_id backwards through all of them. Each index
# ends in id, so the page is the first rows of one index range (the time filter is a range
# of ids: they are UUIDv7).
#
# Every index of messages costs each claim and each outcome an entry (a status change is
# never a HOT update): channel, provider and error class have none (the log checks them on
# a bounded window), and the status one leaves out the statuses a claim moves between.
# With indexes for all six filters, the claim UPDATE's rate (`pg_claim`) halved.
#
# Each is partial on `mode IS NOT NULL`, which every row meets (mode is NOT NULL): only a
# statement that names the mode, as the dashboard's and the API's reads do, implies it, so
# the send path's statements (claims, releases, counts by id, cancel), which do not, can
# never take these indexes for their own. Without statistics (autovacuum off) the planner
# otherwise read, say, the status index for a count of a window's queued messages by id.
#
# CREATE INDEX on messages blocks writes to it while it builds: on a large installation,
# build them first with CREATE INDEX CONCURRENTLY under the same names and definitions, and
# this migration (IF NOT EXISTS) then finds them made.
NAMED_MODE = "mode IS NOT NULL"
MESSAGE_INDEXES: list[tuple[str, list[str], str]] = [
    # Settled statuses only: a claim (queued to sending) adds no entry.
    (
        "ix_messages_tenant_id_mode_status_id",
        ["tenant_id", "mode", "status", "id"],
        f"{NAMED_MODE} AND status NOT IN ('queued', 'sending', 'retrying')",
    ),
    # With the tenant and mode first, like the others, although a recipient's or a
    # notification's id implies both: PostgreSQL plans here without statistics, and then
    # prefers the index whose leading columns match the most conditions.
    (
        "ix_messages_tenant_id_mode_recipient_id_id",
        ["tenant_id", "mode", "recipient_id", "id"],
        NAMED_MODE,
    ),
    (
        "ix_messages_tenant_id_mode_notification_id_id",
        ["tenant_id", "mode", "notification_id", "id"],
        NAMED_MODE,
    ),
]
TEMPLATE_INDEX = "ix_notifications_tenant_id_mode_template_key_id"


def upgrade() -> None:
    for name, columns, where in MESSAGE_INDEXES:
        op.create_index(
            name,
            "messages",
            columns,
            postgresql_where=sa.text(where),
            if_not_exists=True,
        )
    op.create_index(
        TEMPLATE_INDEX,
        "notifications",
        ["tenant_id", "mode", "template_key", "id"],
        postgresql_where=sa.text(NAMED_MODE),
        if_not_exists=True,
    )


def downgrade() -> None:
    op.drop_index(TEMPLATE_INDEX, table_name="notifications", if_exists=True)
    for name, _, _ in reversed(MESSAGE_INDEXES):
        op.drop_index(name, table_name="messages", if_exists=True)
