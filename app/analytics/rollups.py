"""A tenant's messages counted by day and channel, without reading its messages.

The overview shows a tenant's last 30 days: counting its messages on each view would read
up to millions of rows. PostgreSQL keeps the counts instead, as it keeps a notification's
tallies (app/notifications/tallies.py) and for the same reasons: statement-level triggers
on `messages` (migrations/versions/0025_overview_rollups.py) append to `message_rollups`
one row per (tenant, mode, day, channel, measure, bucket) that a statement changed, so
that every writer of messages (dispatch, claims, outcomes, receipts, the sweeper, cancel,
DLQ replay, erasure, and any added later) is counted without knowing it, and workers
finishing batches of the same tenant never wait for one another on a counter row.

What a row counts, for messages of its tenant, mode and channel:
- flows, on the UTC day (`day`) they happened:
  `accepted` written (by dispatch, whatever their status);
  `sent` handed to a provider (moved to sent, or by a receipt straight past it);
  `delivered` reported delivered (or opened, clicked) by the provider;
  `failed` failed for good (to the DLQ, bounced or undelivered);
  `dead_lettered` moved to the DLQ (status failed);
  `latency` of those sent, the time from their notification's acceptance (or its send_at,
  when later) to sent_at, in log-spaced buckets (`bucket`, see `bucket_bounds`);
- states (`day` NULL), counted up on entering and down on leaving:
  `pending` queued, sending or retrying, by the priority's rank in `bucket`;
  `in_dlq` in the DLQ (status failed).

Compaction (`compact`, run by the rollup cron) folds the deltas into one row per key,
oldest first, in bounded rounds. It is exact while writers go on: it adds to the folded
rows exactly the deltas its DELETE removed, and a reader sees the rows before or after the
round's commit, never a mix. Two rounds running at once cannot both fold a delta: the
second's DELETE skips the rows the first deleted.

These are operator statements for compaction (every tenant's rows); readers bind the
tenant and mode (app/analytics/service.py). The caller commits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

COMPACT_LIMIT = 5_000  # delta rows looked at per round
LATENCY_BUCKETS = 64  # bucket b holds (2^((b-1)/2), 2^(b/2)] ms; 0 up to 1 ms; 63 the rest
PRIORITY_RANKS = {"high": 0, "normal": 1, "low": 2}  # pending's bucket, as the trigger writes it


@dataclass(frozen=True)
class Compacted:
    last_id: int | None  # the newest delta looked at: the next round starts after it
    seen: int  # delta rows looked at
    removed: int  # deltas deleted
    written: int  # folded rows written or added to


def bucket_bounds(bucket: int) -> tuple[float, float]:
    """The latencies (ms) of a bucket: (lower, upper]; the trigger's formula, inverted."""
    upper = 2 ** (bucket / 2)
    return (0.0 if bucket == 0 else 2 ** ((bucket - 1) / 2), math.inf if bucket >= 63 else upper)


def bucket_of(milliseconds: float) -> int:
    """The bucket the trigger puts a latency in (for tests and readers)."""
    return min(63, max(0, math.ceil(2 * math.log2(max(milliseconds, 1.0)))))


def percentile(histogram: dict[int, int], fraction: float) -> float | None:
    """The latency (ms) below which `fraction` of the histogram's samples fall, read
    geometrically inside its bucket; None for no samples."""
    total = sum(histogram.values())
    if total <= 0:
        return None
    rank = fraction * total
    seen = 0
    for bucket in sorted(histogram):
        count = histogram[bucket]
        if count <= 0:
            continue
        if seen + count >= rank:
            lower, upper = bucket_bounds(bucket)
            if bucket == 0:
                return 1.0
            if math.isinf(upper):
                return lower
            share = (rank - seen) / count
            return float(lower * (upper / lower) ** share)
        seen += count
    lower, _ = bucket_bounds(max(histogram))
    return lower


# The `limit` oldest deltas after `after` (ix_message_rollups_deltas), deleted, and their
# sums added to the folded rows (ux_message_rollups_folded), in key order so that two
# rounds running at once take the folded rows' locks in the same order.
_COMPACT = text(
    """
    WITH oldest AS (
        SELECT id
          FROM message_rollups
         WHERE NOT folded AND id > :after
         ORDER BY id
         LIMIT :limit
    ), gone AS (
        DELETE FROM message_rollups AS r
         WHERE r.id = ANY(ARRAY(SELECT id FROM oldest)) AND NOT r.folded
        RETURNING r.tenant_id, r.mode, r.day, r.channel, r.measure, r.bucket, r.n
    ), written AS (
        INSERT INTO message_rollups (tenant_id, mode, day, channel, measure, bucket, n, folded)
        SELECT tenant_id, mode, day, channel, measure, bucket, CAST(sum(n) AS bigint), true
          FROM gone
         GROUP BY tenant_id, mode, day, channel, measure, bucket
         ORDER BY tenant_id, mode, day, channel, measure, bucket
        ON CONFLICT (tenant_id, mode, day, channel, measure, bucket) WHERE folded
        DO UPDATE SET n = message_rollups.n + excluded.n
        RETURNING 1
    )
    SELECT (SELECT max(id) FROM oldest) AS last_id,
           (SELECT count(*) FROM oldest) AS seen,
           (SELECT count(*) FROM gone) AS removed,
           (SELECT count(*) FROM written) AS written
    """
)


async def compact(
    session: AsyncSession, *, after: int = 0, limit: int = COMPACT_LIMIT
) -> Compacted:
    """Fold the `limit` oldest deltas past id `after` into the folded rows."""
    row = (await session.execute(_COMPACT, {"after": after, "limit": limit})).one()
    return Compacted(row.last_id, row.seen, row.removed, row.written)
