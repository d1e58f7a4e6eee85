"""audiences expanded in pages: a cursor per notification, held messages released at pace

Revision ID: 0016_audience_expansion
Revises: 0015_message_tallies
Create Date: 2026-12-04 22:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016_audience_expansion"
down_revision = "0015_message_tallies"
branch_labels = None
depends_on = None

# A version-7 UUID made inside PostgreSQL (which has uuidv7() only from version 18): the
# millisecond clock in the first 48 bits, then version and variant, the rest random. Rows
# written by INSERT … SELECT get ids in the same time order as those made in Python.
UUID7 = """
CREATE FUNCTION herald_uuid7() RETURNS uuid AS $$
  SELECT encode(
           set_bit(set_bit(overlay(uuid_send(gen_random_uuid())
                                   placing substring(int8send(
                                     floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint)
                                   FROM 3)
                                   FROM 1 FOR 6),
                           52, 1),
                   53, 1),
           'hex')::uuid
$$ LANGUAGE sql VOLATILE PARALLEL SAFE
"""


def upgrade() -> None:
    op.execute(UUID7)
    op.add_column("notifications", sa.Column("expansion_cursor", sa.Uuid(), nullable=True))
    op.add_column(
        "notifications",
        sa.Column("releasing", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.create_index(
        "ix_notifications_releasing",
        "notifications",
        ["dispatch_after"],
        postgresql_where=sa.text("releasing"),
    )
    op.create_index(
        "ix_messages_held",
        "messages",
        ["notification_id", "id"],
        postgresql_where=sa.text("next_attempt_at = 'infinity'"),
    )


def downgrade() -> None:
    # What was held for release goes on at once.
    op.execute(
        "UPDATE messages AS m SET next_attempt_at = now() FROM notifications AS n"
        " WHERE n.id = m.notification_id AND n.releasing AND n.status <> 'paused'"
        " AND m.status IN ('queued', 'retrying') AND m.next_attempt_at = 'infinity'"
    )
    op.drop_index("ix_messages_held", table_name="messages")
    op.drop_index("ix_notifications_releasing", table_name="notifications")
    op.drop_column("notifications", "releasing")
    op.drop_column("notifications", "expansion_cursor")
    op.execute("DROP FUNCTION herald_uuid7()")
