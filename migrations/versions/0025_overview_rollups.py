"""message_rollups: a tenant's messages counted by day, channel and measure, kept by triggers

Revision ID: 0025_overview_rollups
Revises: 0024_webhook_delivery_retention
Create Date: 2026-12-05 09:30:00

Statement-level triggers on `messages` append one row per (tenant, mode, day, channel,
measure, bucket) that a statement changed, with the change (app/analytics/rollups.py says
what each measure counts and how the rows are folded and read). Created before the
backfill, in the migration's transaction: CREATE TRIGGER waits for every transaction
writing messages and holds the next ones until the commit, so each change is counted once,
by the backfill or by the triggers. The backfill counts what the messages still show:
accepted on the day each was written, sent on its sent_at's day, and the states (pending,
in the DLQ); the older deliveries and failures are not recorded by day anywhere.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0025_overview_rollups"
down_revision = "0024_webhook_delivery_retention"
branch_labels = None
depends_on = None

# One function for the four events, the rows of each going through one query (_MEASURE),
# grouped before they are spread into measures. An UPDATE whose messages all stay between queued,
# sending and retrying (a claim, a renewal, a released claim) measures nothing and returns
# after two scans of its transition tables, without joining them: a claim pays only those.
# The notifications of the changed messages are read by id (their priority, and the time
# each was due: accepted, or its send_at when later), once per statement.
# Latency buckets are log-spaced, sqrt(2) apart: bucket b holds (2^((b-1)/2), 2^(b/2)] ms,
# 0 holds up to 1 ms and 63 everything from 2^31 ms (about 25 days) on. They are computed in
# float8: numeric logarithms cost several times the rest of the statement.
_MEASURE = """
    -- The changes grouped first (a batch is one or a few groups), then spread into measures.
    INSERT INTO message_rollups (tenant_id, mode, day, channel, measure, bucket, n)
    SELECT g.tenant_id, g.mode, e.day, g.channel, e.measure, e.bucket, sum(e.n)
      FROM (
          SELECT c.tenant_id, c.mode, c.channel, c.old_status, c.new_status, x.rank,
                 CASE WHEN c.sent_at IS NOT NULL AND x.due IS NOT NULL
                      THEN least(63, greatest(0, ceil(2 * ln(greatest(
                               extract(epoch FROM c.sent_at - x.due)::float8 * 1000,
                               1.0::float8)) / ln(2.0::float8))))::int
                 END AS latency,
                 count(*) AS n
            FROM ({changes}) AS c
            LEFT JOIN (
                SELECT id,
                       CASE priority WHEN 'high' THEN 0 WHEN 'normal' THEN 1 ELSE 2 END AS rank,
                       greatest(created_at, coalesce(send_at, created_at)) AS due
                  FROM notifications
                 WHERE id = ANY(ARRAY(SELECT DISTINCT notification_id FROM {source}))
            ) AS x ON x.id = c.notification_id
           GROUP BY 1, 2, 3, 4, 5, 6, 7
      ) AS g
      CROSS JOIN LATERAL (
          SELECT g.old_status IN ('queued', 'sending', 'retrying') AS was_pending,
                 g.new_status IN ('queued', 'sending', 'retrying') AS is_pending,
                 g.new_status IN ('sent', 'delivered', 'opened', 'clicked', 'undelivered',
                                  'bounced', 'complained')
                   AND (g.old_status IS NULL
                        OR g.old_status NOT IN ('sent', 'delivered', 'opened', 'clicked',
                                                'undelivered', 'bounced', 'complained'))
                   AS sent
      ) AS s
      CROSS JOIN LATERAL (VALUES
          (today, 'accepted', 0, CASE WHEN g.old_status IS NULL THEN g.n ELSE 0 END),
          (today, 'sent', 0, CASE WHEN s.sent THEN g.n ELSE 0 END),
          (today, 'delivered', 0,
           CASE WHEN g.new_status IN ('delivered', 'opened', 'clicked')
                 AND (g.old_status IS NULL
                      OR g.old_status NOT IN ('delivered', 'opened', 'clicked'))
                THEN g.n ELSE 0 END),
          (today, 'failed', 0,
           CASE WHEN g.new_status IN ('failed', 'bounced', 'undelivered')
                 AND (g.old_status IS NULL
                      OR g.old_status NOT IN ('failed', 'bounced', 'undelivered'))
                THEN g.n ELSE 0 END),
          (today, 'dead_lettered', 0,
           CASE WHEN g.new_status = 'failed' AND g.old_status IS DISTINCT FROM 'failed'
                THEN g.n ELSE 0 END),
          (today, 'latency', coalesce(g.latency, 0),
           CASE WHEN s.sent AND g.latency IS NOT NULL THEN g.n ELSE 0 END),
          (NULL::date, 'in_dlq', 0,
           CASE WHEN g.new_status = 'failed' AND g.old_status IS DISTINCT FROM 'failed' THEN g.n
                WHEN g.old_status = 'failed' AND g.new_status IS DISTINCT FROM 'failed'
                THEN -g.n
                ELSE 0 END),
          -- A message whose notification is gone (deleted with it) leaves no pending count
          -- to correct: none is known for a priority.
          (NULL::date, 'pending', coalesce(g.rank, 1),
           CASE WHEN g.rank IS NULL THEN 0
                WHEN s.is_pending AND s.was_pending IS NOT TRUE THEN g.n
                WHEN s.was_pending AND s.is_pending IS NOT TRUE THEN -g.n
                ELSE 0 END)
      ) AS e(day, measure, bucket, n)
     WHERE e.n <> 0
     GROUP BY g.tenant_id, g.mode, e.day, g.channel, e.measure, e.bucket
    HAVING sum(e.n) <> 0;
"""
_INSERTED = """
SELECT m.tenant_id, m.mode, m.channel, m.notification_id, NULL::varchar AS old_status,
       m.status AS new_status, m.sent_at
  FROM new_messages AS m
"""
_UPDATED = """
SELECT m.tenant_id, m.mode, m.channel, m.notification_id, o.status AS old_status,
       m.status AS new_status, m.sent_at
  FROM new_messages AS m
  JOIN old_messages AS o ON o.id = m.id
 WHERE o.status <> m.status
"""
_DELETED = """
SELECT o.tenant_id, o.mode, o.channel, o.notification_id, o.status AS old_status,
       NULL::varchar AS new_status, NULL::timestamptz AS sent_at
  FROM old_messages AS o
 WHERE o.status IN ('queued', 'sending', 'retrying', 'failed')
"""
_COUNT = "".join(
    (
        """
CREATE FUNCTION message_rollups_count() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    today date := (now() AT TIME ZONE 'UTC')::date;
BEGIN
    IF TG_OP = 'INSERT' THEN
""",
        _MEASURE.format(changes=_INSERTED, source="new_messages"),
        """
    ELSIF TG_OP = 'UPDATE' THEN
        IF NOT EXISTS (SELECT 1 FROM new_messages
                        WHERE status NOT IN ('queued', 'sending', 'retrying'))
           AND NOT EXISTS (SELECT 1 FROM old_messages
                            WHERE status NOT IN ('queued', 'sending', 'retrying')) THEN
            RETURN NULL;
        END IF;
""",
        _MEASURE.format(changes=_UPDATED, source="new_messages"),
        """
    ELSIF TG_OP = 'DELETE' THEN
""",
        _MEASURE.format(changes=_DELETED, source="old_messages"),
        """
    ELSE
        -- TRUNCATE (tests, an operator): no message is pending or in the DLQ any more.
        DELETE FROM message_rollups WHERE day IS NULL;
    END IF;
    RETURN NULL;
END
$$
""",
    )
)

_TRIGGERS = (
    "CREATE TRIGGER messages_rollup_insert AFTER INSERT ON messages"
    " REFERENCING NEW TABLE AS new_messages"
    " FOR EACH STATEMENT EXECUTE FUNCTION message_rollups_count()",
    "CREATE TRIGGER messages_rollup_update AFTER UPDATE ON messages"
    " REFERENCING OLD TABLE AS old_messages NEW TABLE AS new_messages"
    " FOR EACH STATEMENT EXECUTE FUNCTION message_rollups_count()",
    "CREATE TRIGGER messages_rollup_delete AFTER DELETE ON messages"
    " REFERENCING OLD TABLE AS old_messages"
    " FOR EACH STATEMENT EXECUTE FUNCTION message_rollups_count()",
    "CREATE TRIGGER messages_rollup_truncate AFTER TRUNCATE ON messages"
    " FOR EACH STATEMENT EXECUTE FUNCTION message_rollups_count()",
)

_BACKFILL = """
INSERT INTO message_rollups (tenant_id, mode, day, channel, measure, bucket, n, folded)
SELECT m.tenant_id, m.mode, f.day, m.channel, f.measure, f.bucket, count(*), true
  FROM messages AS m
  JOIN notifications AS x ON x.id = m.notification_id
  CROSS JOIN LATERAL (VALUES
      ((m.created_at AT TIME ZONE 'UTC')::date, 'accepted', 0, true),
      ((m.sent_at AT TIME ZONE 'UTC')::date, 'sent', 0, m.sent_at IS NOT NULL),
      (NULL::date, 'in_dlq', 0, m.status = 'failed'),
      (NULL::date, 'pending',
       CASE x.priority WHEN 'high' THEN 0 WHEN 'normal' THEN 1 ELSE 2 END,
       m.status IN ('queued', 'sending', 'retrying'))
  ) AS f(day, measure, bucket, counted)
 WHERE f.counted
 GROUP BY m.tenant_id, m.mode, f.day, m.channel, f.measure, f.bucket
"""


def upgrade() -> None:
    op.create_table(
        "message_rollups",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("mode", sa.String(length=8), nullable=False),
        sa.Column("day", sa.Date(), nullable=True),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("measure", sa.String(length=16), nullable=False),
        sa.Column("bucket", sa.SmallInteger(), server_default="0", nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.Column("folded", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.CheckConstraint("mode IN ('live', 'test')", name=op.f("ck_message_rollups_mode")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_message_rollups")),
    )
    op.create_index(
        "ix_message_rollups_tenant_id_mode_day",
        "message_rollups",
        ["tenant_id", "mode", "day"],
        unique=False,
    )
    op.create_index(
        "ix_message_rollups_deltas",
        "message_rollups",
        ["id"],
        unique=False,
        postgresql_where=sa.text("NOT folded"),
    )
    op.create_index(
        "ux_message_rollups_folded",
        "message_rollups",
        ["tenant_id", "mode", "day", "channel", "measure", "bucket"],
        unique=True,
        postgresql_where=sa.text("folded"),
        postgresql_nulls_not_distinct=True,
    )
    op.execute(_COUNT)
    for trigger in _TRIGGERS:
        op.execute(trigger)
    op.execute(_BACKFILL)


def downgrade() -> None:
    for event in ("insert", "update", "delete", "truncate"):
        op.execute(f"DROP TRIGGER messages_rollup_{event} ON messages")
    op.execute("DROP FUNCTION message_rollups_count()")
    op.drop_index("ux_message_rollups_folded", table_name="message_rollups")
    op.drop_index("ix_message_rollups_deltas", table_name="message_rollups")
    op.drop_index("ix_message_rollups_tenant_id_mode_day", table_name="message_rollups")
    op.drop_table("message_rollups")
