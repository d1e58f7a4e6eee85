"""Periodic jobs: the outbox relay and the sweeper rebuild the queue from PostgreSQL; the
tally compaction keeps notifications' counts cheap to read; the webhook sender attempts
tenants' event deliveries when due.

- `relay` (every RELAY_EVERY s): accepted notifications due more than RELAY_AFTER ago get
  their dispatch job again (job id `dispatch:<id>`: refused while the first one is queued or
  running). arq also refuses an id whose result it keeps (keep_result, 60 s): a dispatch that
  ran and raised blocks its re-enqueue for that long, which is acceptable.
- `sweep` (every SWEEP_EVERY s): messages whose claim expired are released and enqueued;
  queued or retrying messages due more than SWEEP_OVERDUE_AFTER ago are enqueued again.
- `compact_tallies` (every TALLY_EVERY s): the message tallies' deltas are folded into one
  row per (notification, status), oldest first, in rounds of TALLY_LIMIT deltas, each its
  own short transaction, at most TALLY_ROUNDS a tick (app/notifications/tallies.py).
- `compact_rollups` (every ROLLUP_EVERY s): the overview's rollup deltas are folded into one
  row per key the same way, in rounds of ROLLUP_LIMIT (app/analytics/rollups.py).
- `send_webhooks` (every WEBHOOKS_EVERY s): notifications found complete get their event
  (app/notifications/completion.py); the events outbox becomes deliveries
  (app/webhooks/fanout.py); deliveries to tenants' webhook endpoints that are due are
  attempted, rounds of up to 100 each, each taken by one sender (app/webhooks/delivery.py).
- `flush_usage` (every USAGE_EVERY s): the usage counts in Redis are added to usage_counts,
  exactly once per flush (app/usage/service.py); then the quota thresholds the flushed
  counts reached are recorded and the tenants' owners mailed (app/usage/warnings.py).
- `expire_logs` (once a minute): providers' receipts (with their events) and finished
  deliveries to tenants' endpoints past their plan's log retention are deleted, in batches
  of 5,000 (app/receipts/service.py, app/webhooks/delivery.py).
- `end_billing_grace` (once a minute, with Stripe billing on): tenants whose failed payment
  is older than HERALD_BILLING_GRACE_DAYS go down to the default plan
  (app/billing/service.py).
- `report_overage` (once a minute, with Stripe billing on): the overage outbox's reports
  that are due are sent to Stripe's billing meter, a bounded batch a tick, each taken by one
  worker; a failed one is tried again after a backoff (app/billing/overage.py).

Each relay or sweep tick hands all it found to Redis in one call (the outbox's batched
enqueue), whatever the number of jobs: a backlog after a lost Redis costs a round trip per
tick, not per job.

Every queue's worker registers all nine (jobs/worker.py). arq enqueues a tick under the job id
`cron:<name>:<tick in ms>`, and job ids are global to the Redis database, not per queue: one
worker's enqueue wins and the others are refused while the job is queued or running. arq's
cron default keep_result=0 would drop that id once the run ends, so a worker whose
heartbeat came late (all its job slots busy) could enqueue the same tick again and run it a
second time; CRON_KEEP_RESULT keeps the id for longer than any such delay.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import structlog
from arq.cron import CronJob, cron
from prometheus_client import Counter

from app import billing
from app.analytics import rollups
from app.auth.mailer import SystemMailer
from app.billing import overage
from app.billing import service as billing_service
from app.billing.client import stripe_client
from app.db import utcnow
from app.delivery import outbox
from app.delivery.sweeper import DueMessage, expired_claims, overdue
from app.notifications import tallies
from app.notifications.relay import stale_accepted
from app.receipts import service as receipts
from app.usage import service as usage
from app.usage import warnings as usage_warnings
from app.usage.meter import Meter
from app.webhooks import delivery as webhook_delivery
from jobs import queues

log = structlog.get_logger(__name__)

RELAY_EVERY = 5  # seconds
RELAY_AFTER = timedelta(seconds=10)  # the API's own enqueue has had time to land
RELAY_LIMIT = 1_000
SWEEP_EVERY = 10  # seconds
SWEEP_OVERDUE_AFTER = timedelta(seconds=60)
SWEEP_LIMIT = 1_000  # per reason and tick
TALLY_EVERY = 10  # seconds
WEBHOOKS_EVERY = 1  # seconds: a test event, or the first attempt of one, goes at once
EXPIRE_SECOND = 37  # once a minute: retention is counted in days
EXPIRE_BATCH = 5_000
EXPIRE_ROUNDS = 20
GRACE_SECOND = 43  # once a minute: grace periods are counted in days
OVERAGE_SECOND = 51  # once a minute: Stripe bills overage at the end of a billing period
# A busy machine appends a few hundred deltas a second (a claim or an outcome batch writes
# two to four): a tick's rounds cover many times that, and a backlog clears over ticks.
TALLY_LIMIT = tallies.COMPACT_LIMIT
TALLY_ROUNDS = 20
ROLLUP_EVERY = 10  # seconds
ROLLUP_LIMIT = rollups.COMPACT_LIMIT
ROLLUP_ROUNDS = 20
USAGE_EVERY = 10  # seconds: how stale usage_counts may be behind Redis
CRON_TIMEOUT = 60  # seconds; below the workers' job_timeout, so arq's in-progress TTL holds
CRON_KEEP_RESULT = 300  # seconds a tick's id stays taken after its run

RELAY_ENQUEUED = Counter(
    "herald_relay_enqueued_total", "Dispatch jobs the outbox relay enqueued again"
)
SWEEPER_REQUEUED = Counter(
    "herald_sweeper_requeued_total",
    "Messages the sweeper enqueued again",
    ["reason"],  # expired_claim | overdue
)
TALLIES_FOLDED = Counter(
    "herald_tallies_folded_total", "Message tally rows compaction folded into sums"
)


async def relay(
    ctx: dict[str, Any], *, older_than: timedelta = RELAY_AFTER, limit: int = RELAY_LIMIT
) -> int:
    """Enqueue dispatch for notifications still accepted after their due time; the count."""
    async with ctx["sessions"]() as session:
        pending = await stale_accepted(session, older_than=older_than, limit=limit)
    jobs = [outbox.dispatch(n.id, n.priority, n.send_at) for n in pending]
    enqueued = sum(await queues.outbox(ctx["redis"]).enqueue(jobs))  # one round trip
    RELAY_ENQUEUED.inc(enqueued)
    # A stale row whose job is still there (a backlog) is found but not enqueued again.
    _log("relay", stale=len(pending), enqueued=enqueued)
    return enqueued


async def sweep(
    ctx: dict[str, Any],
    *,
    overdue_after: timedelta = SWEEP_OVERDUE_AFTER,
    limit: int = SWEEP_LIMIT,
) -> dict[str, int]:
    """Release expired claims and enqueue them with the overdue messages; counts by reason."""
    async with ctx["sessions"]() as session:
        # Committed before enqueueing: a lost enqueue leaves them due, for the next sweep.
        released = await expired_claims(session, limit=limit)
        await session.commit()
        late = await overdue(session, older_than=overdue_after, limit=limit)
        await session.commit()
    counts = await _enqueue(ctx, {"expired_claim": released, "overdue": late})
    for reason, count in counts.items():
        SWEEPER_REQUEUED.labels(reason).inc(count)
    _log("sweep", **counts)
    return counts


async def compact_tallies(
    ctx: dict[str, Any], *, limit: int = TALLY_LIMIT, rounds: int = TALLY_ROUNDS
) -> dict[str, int]:
    """Fold the tallies' deltas, oldest first, until none are left or `rounds` ran; counts."""
    totals = {"deltas": 0, "notifications": 0, "removed": 0, "written": 0}
    after = 0
    async with ctx["sessions"]() as session:
        for _ in range(rounds):
            # One transaction a round: its notifications' rows are held only that long.
            done = await tallies.compact(session, after=after, limit=limit)
            await session.commit()
            totals["deltas"] += done.seen
            totals["notifications"] += done.notifications
            totals["removed"] += done.removed
            totals["written"] += done.written
            if done.last_id is None or done.seen < limit:
                break
            after = done.last_id  # past what this round skipped (rows held by others)
    TALLIES_FOLDED.inc(totals["removed"])
    _log("compact_tallies", **totals)
    return totals


async def compact_rollups(
    ctx: dict[str, Any], *, limit: int = ROLLUP_LIMIT, rounds: int = ROLLUP_ROUNDS
) -> dict[str, int]:
    """Fold the overview rollups' deltas, oldest first, until none are left or `rounds` ran."""
    totals = {"deltas": 0, "removed": 0, "written": 0}
    after = 0
    async with ctx["sessions"]() as session:
        for _ in range(rounds):
            done = await rollups.compact(session, after=after, limit=limit)
            await session.commit()
            totals["deltas"] += done.seen
            totals["removed"] += done.removed
            totals["written"] += done.written
            if done.last_id is None or done.seen < limit:
                break
            after = done.last_id
    _log("compact_rollups", **totals)
    return totals


async def _enqueue(ctx: dict[str, Any], found: dict[str, Sequence[DueMessage]]) -> dict[str, int]:
    """Deliver jobs of up to BATCH_SIZE ids per (priority, channel), all in one round trip;
    the ids enqueued per reason."""
    tick = str(int(time.time()))
    jobs: list[outbox.Job] = []
    reasons: list[tuple[str, int]] = []  # per job: its reason and how many ids it holds
    for reason, messages in found.items():
        keyed = (((m.priority, m.channel), m.id) for m in messages)
        for (priority, _), ids in outbox.batches(keyed):
            jobs.append(outbox.redeliver("sweep", priority, ids, tick))
            reasons.append((reason, len(ids)))
    written = await queues.outbox(ctx["redis"]).enqueue(jobs)
    counts = dict.fromkeys(found, 0)
    for (reason, size), new in zip(reasons, written, strict=True):
        counts[reason] += size if new else 0
    return counts


def _log(event: str, **counts: int) -> None:
    # Every few seconds on every deployment: only a tick that found something is news.
    (log.info if any(counts.values()) else log.debug)(event, **counts)


async def send_webhooks(ctx: dict[str, Any]) -> int:
    """Find completed notifications, turn the events outbox into deliveries, and attempt
    the tenants' webhook deliveries that are due (app/webhooks/delivery.py)."""
    sender: webhook_delivery.Sender = ctx["webhooks"]
    tick = await sender.run()
    _log("send_webhooks", completed=tick.completed, fanned_out=tick.fanned_out, tried=tick.tried)
    return tick.tried


async def expire_logs(ctx: dict[str, Any]) -> int:
    """Delete providers' receipts and finished webhook deliveries past their plan's log
    retention, a batch per transaction."""
    counts = {"receipts": 0, "deliveries": 0}
    deleters = {"receipts": receipts.delete_expired, "deliveries": webhook_delivery.delete_expired}
    for name, deleter in deleters.items():
        for _ in range(EXPIRE_ROUNDS):
            async with ctx["sessions"]() as session:
                count = await deleter(session, utcnow(), limit=EXPIRE_BATCH)
                await session.commit()
            counts[name] += count
            if count < EXPIRE_BATCH:
                break
    _log("expire_logs", **counts)
    return sum(counts.values())


async def flush_usage(ctx: dict[str, Any], *, now: datetime | None = None) -> int:
    """Add the usage counted in Redis to PostgreSQL, then warn the owners of tenants whose
    flushed counts reached 80 % or 100 % of a quota; the flushes applied."""
    meter: Meter | None = ctx.get("meter")
    if meter is None:
        return 0
    touched: usage.Touched = set()
    # With billing on, the flush also writes the overage to report (cron:report_overage).
    bill = billing.enabled(ctx["settings"])
    applied = await usage.flush(ctx["sessions"], meter, touched, bill_overage=bill)
    _log("flush_usage", flushes=applied)
    settings = ctx["settings"]
    mailer = ctx.get("mailer") or SystemMailer(settings.smtp_url, settings.mail_from)
    # After the flush's commit, never inside it; and the retries of mails an earlier run
    # could not send ride on every tick, touched keys or not.
    await usage_warnings.check(
        ctx["sessions"], mailer, touched, public_url=settings.public_url, now=now
    )
    return applied


async def end_billing_grace(ctx: dict[str, Any], *, now: datetime | None = None) -> int:
    """Move tenants past their grace period to the default plan; how many moved."""
    settings = ctx["settings"]
    if not billing.enabled(settings):
        return 0
    async with ctx["sessions"]() as session:
        moved = await billing_service.end_expired_grace(session, settings, now=now or utcnow())
        await session.commit()
    _log("end_billing_grace", moved=moved)
    return moved


async def report_overage(ctx: dict[str, Any], *, now: datetime | None = None) -> int:
    """Send the overage reports that are due to Stripe's billing meter; how many were."""
    settings = ctx["settings"]
    if not billing.enabled(settings):
        return 0
    async with stripe_client(settings) as client:
        assert client is not None
        tick = await overage.report_due(ctx["sessions"], client, settings, now=now or utcnow())
    _log("report_overage", reported=tick.reported, retried=tick.retried, failed=tick.failed)
    return tick.reported


def cron_jobs() -> list[CronJob]:
    """Fresh CronJob objects: arq keeps each one's next run on it, so workers must not share."""
    return [
        cron(
            relay,
            name="cron:relay",
            second=set(range(0, 60, RELAY_EVERY)),
            timeout=CRON_TIMEOUT,
            keep_result=CRON_KEEP_RESULT,
        ),
        cron(
            sweep,
            name="cron:sweep",
            second=set(range(0, 60, SWEEP_EVERY)),
            timeout=CRON_TIMEOUT,
            keep_result=CRON_KEEP_RESULT,
        ),
        cron(
            compact_tallies,
            name="cron:compact_tallies",
            # Not on the relay's and the sweep's seconds (multiples of 5): ticks spread out.
            second=set(range(3, 60, TALLY_EVERY)),
            timeout=CRON_TIMEOUT,
            keep_result=CRON_KEEP_RESULT,
        ),
        cron(
            compact_rollups,
            name="cron:compact_rollups",
            second=set(range(7, 60, ROLLUP_EVERY)),
            timeout=CRON_TIMEOUT,
            keep_result=CRON_KEEP_RESULT,
        ),
        cron(
            expire_logs,
            name="cron:expire_logs",
            second={EXPIRE_SECOND},
            timeout=CRON_TIMEOUT,
            keep_result=CRON_KEEP_RESULT,
        ),
        cron(
            flush_usage,
            name="cron:flush_usage",
            second=set(range(9, 60, USAGE_EVERY)),
            timeout=CRON_TIMEOUT,
            keep_result=CRON_KEEP_RESULT,
        ),
        cron(
            end_billing_grace,
            name="cron:end_billing_grace",
            second={GRACE_SECOND},
            timeout=CRON_TIMEOUT,
            keep_result=CRON_KEEP_RESULT,
        ),
        cron(
            report_overage,
            name="cron:report_overage",
            second={OVERAGE_SECOND},
            timeout=CRON_TIMEOUT,
            keep_result=CRON_KEEP_RESULT,
        ),
        cron(
            send_webhooks,
            name="cron:send_webhooks",
            second=set(range(0, 60, WEBHOOKS_EVERY)),
            timeout=CRON_TIMEOUT,
            keep_result=CRON_KEEP_RESULT,
        ),
    ]
