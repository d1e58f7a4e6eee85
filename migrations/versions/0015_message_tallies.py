"""message_tallies: a notification's messages counted by status, kept by triggers on messages

Revision ID: 0015_message_tallies
Revises: 0014_topic_preferences
Create Date: 2026-12-16 08:00:00

Statement-level triggers on `messages` append one row per (notification, status) that a
statement changed, with the change in number (app/notifications/tallies.py says why and how
they are read and folded). Created before the backfill, in the migration's transaction:
CREATE TRIGGER waits for every transaction writing messages and holds the next ones until
the commit, so each message is counted once, by the backfill or by the triggers.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015_message_tallies"
down_revision = "0014_topic_preferences"
branch_labels = None
depends_on = None

# One function for the three events: a statement's messages grouped by (notification,
# status), added (new rows) or taken away (old rows). An UPDATE that leaves every status as
# it was (a lease renewed, a message read) nets to nothing and writes nothing. A DELETE
# counts only the notifications that are still there: messages deleted with their
# notification (the cascade) take its tallies with them (message_tallies_forget). TRUNCATE
# (tests, an operator) empties messages, hence their tallies.
_COUNT = """
CREATE FUNCTION message_tallies_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO message_tallies (notification_id, status, n)
        SELECT notification_id, status, count(*)
          FROM new_messages
         GROUP BY notification_id, status;
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO message_tallies (notification_id, status, n)
        SELECT notification_id, status, CAST(sum(n) AS bigint)
          FROM (SELECT notification_id, status, count(*) AS n
                  FROM new_messages GROUP BY notification_id, status
                UNION ALL
                SELECT notification_id, status, -count(*)
                  FROM old_messages GROUP BY notification_id, status) AS change
         GROUP BY notification_id, status
        HAVING sum(n) <> 0;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO message_tallies (notification_id, status, n)
        SELECT gone.notification_id, gone.status, gone.n
          FROM (SELECT notification_id, status, -count(*) AS n
                  FROM old_messages GROUP BY notification_id, status) AS gone
         WHERE EXISTS (SELECT 1 FROM notifications AS x WHERE x.id = gone.notification_id);
    ELSE
        TRUNCATE message_tallies;
    END IF;
    RETURN NULL;
END
$$
"""

# No foreign key from message_tallies to notifications: its check would lock the
# notification's row (FOR KEY SHARE) on every tally written, that is on every claim and
# outcome, which would then wait for a dispatch, a cancel or a pause holding that row FOR
# UPDATE, and pile up multixacts on a broadcast's row. This trigger does the cascade's work.
_FORGET = """
CREATE FUNCTION message_tallies_forget() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM message_tallies AS t USING gone_notifications AS g
     WHERE t.notification_id = g.id;
    RETURN NULL;
END
$$
"""

_TRIGGERS = (
    "CREATE TRIGGER messages_tally_insert AFTER INSERT ON messages"
    " REFERENCING NEW TABLE AS new_messages"
    " FOR EACH STATEMENT EXECUTE FUNCTION message_tallies_count()",
    # PostgreSQL refuses `UPDATE OF status` with transition tables: every UPDATE fires it.
    "CREATE TRIGGER messages_tally_update AFTER UPDATE ON messages"
    " REFERENCING OLD TABLE AS old_messages NEW TABLE AS new_messages"
    " FOR EACH STATEMENT EXECUTE FUNCTION message_tallies_count()",
    "CREATE TRIGGER messages_tally_delete AFTER DELETE ON messages"
    " REFERENCING OLD TABLE AS old_messages"
    " FOR EACH STATEMENT EXECUTE FUNCTION message_tallies_count()",
    "CREATE TRIGGER messages_tally_truncate AFTER TRUNCATE ON messages"
    " FOR EACH STATEMENT EXECUTE FUNCTION message_tallies_count()",
    "CREATE TRIGGER notifications_tally_forget AFTER DELETE ON notifications"
    " REFERENCING OLD TABLE AS gone_notifications"
    " FOR EACH STATEMENT EXECUTE FUNCTION message_tallies_forget()",
)

_BACKFILL = """
INSERT INTO message_tallies (notification_id, status, n, folded)
SELECT notification_id, status, count(*), true
  FROM messages
 GROUP BY notification_id, status
"""


def upgrade() -> None:
    op.create_table(
        "message_tallies",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("notification_id", sa.Uuid(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.Column("folded", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_message_tallies")),
    )
    op.create_index(
        op.f("ix_message_tallies_notification_id"),
        "message_tallies",
        ["notification_id"],
        unique=False,
    )
    op.create_index(
        "ix_message_tallies_deltas",
        "message_tallies",
        ["id"],
        unique=False,
        postgresql_where=sa.text("NOT folded"),
    )
    op.execute(_COUNT)
    op.execute(_FORGET)
    for trigger in _TRIGGERS:
        op.execute(trigger)
    op.execute(_BACKFILL)


def downgrade() -> None:
    op.execute("DROP TRIGGER notifications_tally_forget ON notifications")
    for event in ("insert", "update", "delete", "truncate"):
        op.execute(f"DROP TRIGGER messages_tally_{event} ON messages")
    op.execute("DROP FUNCTION message_tallies_forget()")
    op.execute("DROP FUNCTION message_tallies_count()")
    op.drop_index("ix_message_tallies_deltas", table_name="message_tallies")
    op.drop_index(op.f("ix_message_tallies_notification_id"), table_name="message_tallies")
    op.drop_table("message_tallies")
