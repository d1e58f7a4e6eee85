"""The sweeper's statements: messages whose delivery job is gone, found again in PostgreSQL.

Two ways a message loses its job. A worker killed mid-batch leaves it `sending` with a
lease that runs out (`expired_claims` gives it back, recording the lost attempt). A Redis
flush or failover drops queued deliver jobs and deferred retries, leaving it `queued` or
`retrying` long after it was due (`overdue` finds it). The sweep cron (jobs/cron.py)
enqueues what both return; enqueueing a message twice is harmless because the claim is
atomic. These are operator jobs: they read every tenant's rows. The caller commits.

Statuses are literals, not parameters, so that PostgreSQL matches the partial indexes'
predicates (ix_messages_claims, ix_messages_due) in generic (cached) plans too.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.delivery.retry import RetryPolicy

LOST_ERROR = "worker lost its claim"


@dataclass(frozen=True)
class DueMessage:
    id: uuid.UUID
    priority: str
    channel: str


# One statement: lock the expired claims (SKIP LOCKED: a worker recording its outcomes right
# now keeps its row), release them, and write a 'lost' attempt for each. The attempt keeps
# its number: the provider may have been called. Its start is the claim's time (the claim
# sets updated_at); which provider it used is not known. Messages of a paused channel are
# released too but not returned: they wait for the pause to be lifted, like the rest. A
# message that has lost its claim with the tenant's whole attempt budget spent goes to the
# dead-letter queue instead: one that crashes every worker that takes it must stop.
_EXPIRED = text(
    """
    WITH lost AS (
        SELECT m.id, m.updated_at AS claimed_at
          FROM messages AS m
         WHERE m.status = 'sending' AND m.claimed_until < now()
         ORDER BY m.claimed_until
         LIMIT :limit
           FOR UPDATE SKIP LOCKED
    ), released AS (
        UPDATE messages AS m
           SET status = CASE WHEN m.attempts - m.rate_limited_attempts >= (
                               CASE WHEN jsonb_typeof(t.retry_policy -> 'max_attempts') = 'number'
                                    THEN (t.retry_policy ->> 'max_attempts')::numeric
                                    ELSE :default_max END)
                             THEN 'failed' ELSE 'retrying' END,
               claimed_until = NULL, next_attempt_at = now(),
               error_class = 'transient', last_error = :error, updated_at = now()
          FROM lost, tenants AS t
         WHERE m.id = lost.id AND t.id = m.tenant_id
        RETURNING m.id, m.tenant_id, m.notification_id, m.channel, m.attempts, m.status,
                  lost.claimed_at
    ), recorded AS (
        INSERT INTO attempts (message_id, tenant_id, n, provider, started_at, latency_ms,
                              outcome, error_class, error)
        SELECT id, tenant_id, attempts, 'unknown', coalesce(claimed_at, now()), 0,
               'lost', 'transient', :error
          FROM released
    )
    SELECT r.id, n.priority, r.channel
      FROM released AS r
      JOIN notifications AS n ON n.id = r.notification_id
      JOIN tenants AS t ON t.id = r.tenant_id
     WHERE (t.kill_switches ->> r.channel) IS DISTINCT FROM 'pause' AND r.status = 'retrying'
     ORDER BY r.id
    """
)

# Due at next_attempt_at, or at created_at where it is NULL (rows written before dispatch
# set it). One branch each, so that each is an index scan on ix_messages_due with an Index
# Cond (`next_attempt_at < …`, in due order; `next_attempt_at IS NULL`) that stops at the
# limit, rather than one OR that reads every overdue row and sorts them: after a lost Redis
# that may be the whole backlog, every tick. The first branch also says `< 'infinity'`
# (held messages, never due), which proves the index's predicate: the planner cannot
# compare `now() - …` with it. What is returned is stamped due now: the next
# sweep does not enqueue it again before `older_than` has passed once more, and moves on to
# the rest of a backlog instead of the same oldest rows. The UPDATE re-checks the status,
# so a message claimed meanwhile is left alone.
_OVERDUE = text(
    """
    WITH due AS (
        (SELECT m.id, m.next_attempt_at AS due_at
           FROM messages AS m
           JOIN tenants AS t ON t.id = m.tenant_id
          WHERE m.status IN ('queued', 'retrying')
            AND m.next_attempt_at < now() - CAST(:older_than AS interval)
            AND m.next_attempt_at < 'infinity'
            AND (t.kill_switches ->> m.channel) IS DISTINCT FROM 'pause'
          ORDER BY m.next_attempt_at
          LIMIT :limit)
        UNION ALL
        (SELECT m.id, m.created_at
           FROM messages AS m
           JOIN tenants AS t ON t.id = m.tenant_id
          WHERE m.status IN ('queued', 'retrying')
            AND m.next_attempt_at IS NULL
            AND m.created_at < now() - CAST(:older_than AS interval)
            AND (t.kill_switches ->> m.channel) IS DISTINCT FROM 'pause'
          LIMIT :limit)
    ), picked AS (
        SELECT id FROM due ORDER BY due_at LIMIT :limit
    )
    UPDATE messages AS m
       SET next_attempt_at = now(), updated_at = now()
      FROM picked, notifications AS n
     WHERE m.id = picked.id AND n.id = m.notification_id
       AND m.status IN ('queued', 'retrying')
    RETURNING m.id, n.priority, m.channel
    """
)


async def expired_claims(session: AsyncSession, *, limit: int) -> list[DueMessage]:
    """Release up to `limit` messages whose claim ran out; the ones to enqueue again."""
    params = {"limit": limit, "error": LOST_ERROR, "default_max": RetryPolicy().max_attempts}
    rows = await session.execute(_EXPIRED, params)
    return [DueMessage(row.id, row.priority, row.channel) for row in rows]


async def overdue(session: AsyncSession, *, older_than: timedelta, limit: int) -> list[DueMessage]:
    """The `limit` longest-overdue queued or retrying messages (due more than `older_than`
    ago), leaving out paused channels; each is stamped due now. Sorted by id."""
    rows = await session.execute(_OVERDUE, {"older_than": older_than, "limit": limit})
    return sorted(
        (DueMessage(row.id, row.priority, row.channel) for row in rows), key=lambda m: m.id
    )
