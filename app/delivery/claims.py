"""Claiming messages for delivery, and giving back the ones not sent.

The claim is one UPDATE that moves messages from queued/retrying to sending with a lease
and counts the attempt; a message another worker holds, one cancelled meanwhile, one not
yet due, one whose tenant paused its channel or one of a paused notification is not
claimed, and a non-critical one of a channel switched to drop_noncritical is skipped
instead. A message released without a provider call gets its attempt back and waits until
the time it is given.

The lease is short and its holder renews it while the batch runs (`renew`): a batch may
legitimately take minutes (a provider slow to time out, 100 messages at 32 at a time), but a
dead worker's claims are given back by the sweeper soon after their last renewal.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.templates.content import Content

# What a dead worker's claim holds its messages back: the lease, and up to one sweep
# (SWEEP_EVERY, 10 s) after it. A live holder renews every LEASE_RENEW_EVERY, so two
# renewals in a row may fail (a PostgreSQL slow or briefly gone) before its claims run out;
# when they do, the outcomes it then writes are refused and the sweeper's choice stands.
CLAIM_LEASE = timedelta(seconds=30)
LEASE_RENEW_EVERY = 10.0  # seconds
_CONTENT = msgspec.json.Decoder(Content)

_CLAIM = text(
    """
    UPDATE messages AS m
       SET status = 'sending', claimed_until = now() + :lease, attempts = m.attempts + 1,
           updated_at = now()
      FROM renders AS r, notifications AS n, tenants AS t
     WHERE m.id = ANY(:ids)
       AND m.status IN ('queued', 'retrying')
       AND (m.next_attempt_at IS NULL OR m.next_attempt_at <= now())
       AND r.id = m.render_id AND n.id = m.notification_id AND t.id = m.tenant_id
       AND (t.kill_switches ->> m.channel) IS DISTINCT FROM 'pause'
       AND n.status <> 'paused'
    RETURNING m.id, m.tenant_id, m.notification_id, m.recipient_id, m.channel, m.address,
              m.attempts, m.rate_limited_attempts,
              coalesce(m.retry_window_from, m.created_at) AS retry_window_from,
              m.claimed_until, m.render_id, CAST(r.content AS text) AS content,
              n.mode, n.priority, n.trace_context, n.category, n.critical IS TRUE AS critical,
              t.plan,
              CAST(t.retry_policy AS text) AS retry_policy,
              ((t.kill_switches ->> m.channel) = 'drop_noncritical' AND n.critical IS NOT TRUE)
                  AS dropped
    """
)

# Claimed messages of a non-critical notification on a channel switched to drop_noncritical
# (since they were queued: setting the switch skips the waiting ones, but not those being
# sent then and given back, nor those of a dispatch that read the switches just before).
_DROP = text(
    """
    UPDATE messages AS m
       SET status = 'skipped', skip_reason = 'kill_switch', attempts = m.attempts - 1,
           claimed_until = NULL, next_attempt_at = NULL, updated_at = now()
      FROM unnest(CAST(:ids AS uuid[]), CAST(:tokens AS timestamptz[])) AS d(id, token)
     WHERE m.id = d.id AND m.status = 'sending' AND m.claimed_until = d.token
    """
)

# Not an attempt: the count goes back, and a message that had failed before keeps saying so.
# Only the claim's holder may give it back: `claimed_until` is the claim's token (a claim
# the sweeper took back after its lease ran out, and maybe handed to another worker since,
# no longer matches).
_RELEASE = text(
    """
    UPDATE messages AS m
       SET status = CASE WHEN m.attempts > 1 THEN 'retrying' ELSE 'queued' END,
           attempts = m.attempts - 1, claimed_until = NULL, next_attempt_at = w.at,
           updated_at = now()
      FROM unnest(CAST(:ids AS uuid[]), CAST(:ats AS timestamptz[]),
                  CAST(:tokens AS timestamptz[])) AS w(id, at, token)
     WHERE m.id = w.id AND m.status = 'sending' AND m.claimed_until = w.token
    """
)


# The holder extends its claims; the new end is the claim's new token.
_RENEW = text(
    """
    UPDATE messages AS m
       SET claimed_until = now() + :lease
      FROM unnest(CAST(:ids AS uuid[]), CAST(:tokens AS timestamptz[])) AS c(id, token)
     WHERE m.id = c.id AND m.status = 'sending' AND m.claimed_until = c.token
    RETURNING m.id, m.claimed_until
    """
)

# Messages waiting for a breaker that has closed since: due now. Only while they still wait
# for that breaker: still given back (not claimed again, nor sent), due at the very time
# they were held until.
_BRING_FORWARD = text(
    """
    UPDATE messages AS m
       SET next_attempt_at = now(), updated_at = now()
      FROM unnest(CAST(:ids AS uuid[]), CAST(:ats AS timestamptz[])) AS h(id, at),
           notifications AS n
     WHERE m.id = h.id AND m.status IN ('queued', 'retrying') AND m.next_attempt_at = h.at
       AND n.id = m.notification_id
    RETURNING m.id, n.priority
    """
)


@dataclass
class Claimed:
    id: uuid.UUID
    tenant_id: uuid.UUID
    notification_id: uuid.UUID
    recipient_id: uuid.UUID
    channel: str
    address: str
    attempt: int  # this attempt's number, counted from 1
    rate_limited_attempts: int  # earlier attempts a provider answered "rate limited"
    retry_window_from: datetime  # the retry policy's window starts here (creation, or replay)
    claimed_until: datetime  # the lease's end, and the claim's token: see record / release
    # (renew moves both)
    content: Content
    mode: str
    priority: str
    plan: str
    retry_policy: dict[str, Any]
    trace_context: str | None  # the accepting request's trace, continued by each attempt
    # The notification's category, and whether it was critical at dispatch: e-mail of a
    # non-critical one carries an unsubscribe link for that category (app/unsubscribe/).
    category: str
    critical: bool

    @property
    def platform(self) -> str:
        """Push messages name their platform in the address (`fcm:<token>`)."""
        return self.address.split(":", 1)[0] if self.channel == "push" else ""


async def claim(
    session: AsyncSession, message_ids: Sequence[uuid.UUID], lease: timedelta = CLAIM_LEASE
) -> list[Claimed]:
    """Claim the messages that may be sent now; those a kill switch drops are skipped."""
    rows = (await session.execute(_CLAIM, {"ids": list(message_ids), "lease": lease})).all()
    dropped = [row for row in rows if row.dropped]
    if dropped:
        await session.execute(
            _DROP, {"ids": [r.id for r in dropped], "tokens": [r.claimed_until for r in dropped]}
        )
    # A batch's messages share a few renders and tenants: each content and retry policy is
    # decoded once (as text, straight into its type), not once per message.
    contents: dict[uuid.UUID, Content] = {}
    policies: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row.render_id not in contents:
            contents[row.render_id] = _CONTENT.decode(row.content)
        if row.retry_policy not in policies:
            stored = row.retry_policy
            policies[stored] = {} if stored is None else msgspec.json.decode(stored)
    return [
        Claimed(
            id=row.id,
            tenant_id=row.tenant_id,
            notification_id=row.notification_id,
            recipient_id=row.recipient_id,
            channel=row.channel,
            address=row.address,
            attempt=row.attempts,
            rate_limited_attempts=row.rate_limited_attempts,
            retry_window_from=row.retry_window_from,
            claimed_until=row.claimed_until,
            content=contents[row.render_id],
            mode=row.mode,
            priority=row.priority,
            plan=row.plan,
            retry_policy=policies[row.retry_policy],
            trace_context=row.trace_context,
            category=row.category,
            critical=row.critical,
        )
        for row in rows
        if not row.dropped
    ]


async def release(session: AsyncSession, waiting: Sequence[tuple[Claimed, datetime]]) -> None:
    """Give claimed messages back unsent; each is due again at its time."""
    if waiting:
        await session.execute(
            _RELEASE,
            {
                "ids": [m.id for m, _ in waiting],
                "ats": [at for _, at in waiting],
                "tokens": [m.claimed_until for m, _ in waiting],
            },
        )


async def renew(
    session: AsyncSession, claims: Sequence[Claimed], lease: timedelta = CLAIM_LEASE
) -> int:
    """Extend the claims still held (each one's token moves with its end); how many were."""
    if not claims:
        return 0
    rows = await session.execute(
        _RENEW,
        {
            "ids": [m.id for m in claims],
            "tokens": [m.claimed_until for m in claims],
            "lease": lease,
        },
    )
    renewed = {row.id: row.claimed_until for row in rows}
    for message in claims:
        message.claimed_until = renewed.get(message.id, message.claimed_until)
    return len(renewed)


async def bring_forward(
    session: AsyncSession, held: Sequence[tuple[uuid.UUID, datetime]]
) -> list[tuple[uuid.UUID, str]]:
    """Make messages held until a time due now, those still waiting for exactly that time;
    (id, priority) of each."""
    if not held:
        return []
    rows = await session.execute(
        _BRING_FORWARD, {"ids": [i for i, _ in held], "ats": [at for _, at in held]}
    )
    return [(row.id, row.priority) for row in rows]
