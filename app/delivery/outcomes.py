"""Recording what a batch's sends came to, written while the batch runs.

`record` writes a group of outcomes in bulk: one UPDATE of the messages (each only while
its claim still holds) and one INSERT of their attempts, suppressing the addresses a
provider called dead, and says which messages to try again and when (the tenant's retry
policy). `OutcomeWriter` is the Deliverer's background flusher: it writes outcomes as sends
finish, in small bulk writes (every FLUSH_EVERY seconds or FLUSH_RESULTS outcomes, whichever
comes first), so that a worker killed mid-batch leaves only its sends in flight to be sent
again. It also tells the breakers (through the router) how each group of sends went, brings
forward the messages a closing breaker released, and renews the claims the batch still holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from prometheus_client import Counter
from sqlalchemy import text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import utcnow
from app.delivery.claims import LEASE_RENEW_EVERY, Claimed, bring_forward, renew
from app.delivery.retry import RetryPolicy, retry_delay
from app.delivery.routing import Router, Send
from app.ids import uuid7s
from app.notifications.models import Attempt
from app.providers.base import SendResult
from app.recipients.service import ERASED_TEXT, add_suppressions, erased_messages
from app.recipients.validation import suppression_key
from app.webhooks import events
from app.webhooks.events import MESSAGE_DATA_SQL, WANTED_SQL, event_id

log = structlog.get_logger(__name__)

# Tried again later (config: after its breaker opens, through the channel's next provider).
RETRYABLE_CLASSES = ("transient", "rate_limited", "config")
# A finished send waits at most this long, or for this many others, before it is written:
# what a crash can make go twice beyond the sends in flight. Small enough to be little,
# large enough that a fast batch is a few writes, not one per send.
FLUSH_EVERY = 0.05  # seconds
FLUSH_RESULTS = 50
RETRY_PAUSE = 0.5  # seconds between tries of a write that failed (PostgreSQL gone a moment)

MESSAGES_SENT = Counter(
    "herald_messages_total",
    "Messages by final outcome of an attempt",
    ["channel", "provider", "outcome"],
)


@dataclass(frozen=True)
class Due:
    """A message to run again at `at`; `attempt` is 0 when it was not an attempt."""

    message_id: uuid.UUID
    priority: str
    at: datetime
    attempt: int = 0


@dataclass(frozen=True)
class Sent:
    send: Send
    provider: str
    result: SendResult
    latency_ms: int


class OutcomeWriter:
    """Writes a batch's outcomes while it runs; `start`, then `add` each, then `finish`.

    `started` is when the batch's sends began (the attempts' start, the clock of retries);
    `claims` are the claimed messages being sent, whose leases it renews until their
    outcome is written or the batch ends.
    """

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        router: Router,
        started: datetime,
        claims: Sequence[Claimed],
    ) -> None:
        self.sessions = sessions
        self.router = router
        self.started = started
        self.due: list[Due] = []  # retries, and messages a closing breaker released
        self._open = {message.id: message for message in claims}
        self._buffer: list[Sent] = []
        self._pending = asyncio.Event()  # something to write
        self._full = asyncio.Event()  # enough to write now (or the batch is over)
        self._finishing = False
        # Writes and renewals both move claims (one ends them, the other changes their
        # token): one at a time. Renewals run apart from the writes, so that a write waiting
        # on something else (a breaker in Redis) cannot let the claims run out.
        self._claims = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run()), asyncio.create_task(self._renewing())]

    def add(self, outcome: Sent) -> None:
        self._buffer.append(outcome)
        self._pending.set()
        if len(self._buffer) >= FLUSH_RESULTS:
            self._full.set()

    async def finish(self) -> list[Due]:
        """Write what is left; every message to run again, and when. A write that still
        fails now raises: the messages stay claimed, for the sweeper."""
        self._finishing = True
        self._pending.set()
        self._full.set()
        try:
            if self._tasks:
                await self._tasks[0]
        finally:
            await self.cancel()
        return self.due

    async def cancel(self) -> None:
        """Stop writing and renewing (what is not written stays claimed, for the sweeper)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def held(self) -> list[Claimed]:
        """The claims whose outcome is not written."""
        return list(self._open.values())

    async def _run(self) -> None:
        while True:
            await self._pending.wait()
            await _wait(self._full, FLUSH_EVERY)
            try:
                await self._flush()
            except Exception:
                if self._finishing:
                    raise
                log.exception("outcomes not written yet: trying again")
                await asyncio.sleep(RETRY_PAUSE)
            if self._finishing and not self._buffer:
                return

    async def _renewing(self) -> None:
        while True:
            await asyncio.sleep(LEASE_RENEW_EVERY)
            try:
                async with self._claims, self.sessions() as session:
                    await renew(session, self.held())
                    await session.commit()
            except Exception:  # the lease allows for a missed renewal
                log.exception("claims not renewed")

    async def _flush(self) -> None:
        batch, self._buffer = self._buffer, []
        self._pending.clear()
        self._full.clear()
        if not batch:
            return
        try:
            async with self._claims, self.sessions() as session:
                retries = await record(session, batch, self.started)
                await session.commit()
        except BaseException:
            # Tried again at the next round. A commit whose answer was lost may have been
            # made: its outcomes are then not written twice (their claims are gone), but
            # their attempts are.
            self._buffer = batch + self._buffer
            self._pending.set()
            raise
        for outcome in batch:
            self._open.pop(outcome.send.message.id, None)
        self.due += retries
        released = await self.router.report([(o.send, o.result) for o in batch])
        if released:
            try:
                async with self.sessions() as session:
                    now_due = await bring_forward(session, released)
                    await session.commit()
            except Exception:  # they still go at the time they were given
                log.exception("released messages not brought forward")
                return
            now = utcnow()
            self.due += [Due(message_id, priority, now) for message_id, priority in now_due]


async def _wait(event: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)


async def record(session: AsyncSession, started: Sequence[Sent], now: datetime) -> list[Due]:
    """Write every outcome in bulk; return the messages to try again, and when."""
    updates: list[dict[str, Any]] = []
    attempts: list[dict[str, Any]] = []
    retries: list[Due] = []
    bounced: list[tuple[Claimed, str, str]] = []  # (message, reason, provider)
    for outcome in started:
        message, provider, result = outcome.send.message, outcome.provider, outcome.result
        row = _outcome(message, provider, result, now)
        updates.append(row)
        if row["status"] == "retrying":
            retries.append(
                Due(message.id, message.priority, row["next_attempt_at"], message.attempt)
            )
        if result.suppress:
            bounced.append((message, result.suppress, provider))
        attempts.append(_attempt_row(outcome, now))
        MESSAGES_SENT.labels(message.channel, provider, row["status"]).inc()
    erased: set[uuid.UUID] = set()
    if updates:
        held = await _write_outcomes(session, updates)
        # An outcome written by a worker that lost its claim meanwhile is dropped: whoever
        # holds the message now decides. The attempt happened all the same. Erasure is one
        # such holder: what the provider answered may quote the erased address.
        retries = [due for due in retries if due.message_id in held]
        lost = [(row["tenant_id"], row["message_id"]) for row in attempts]
        erased = await erased_messages(session, [pair for pair in lost if pair[1] not in held])
        for attempt in attempts:
            if attempt["message_id"] in erased and attempt["error"] is not None:
                attempt["error"] = ERASED_TEXT
        await session.execute(insert(Attempt), attempts)
    await _suppress(session, bounced, erased, now)
    return retries


async def _suppress(
    session: AsyncSession,
    bounced: list[tuple[Claimed, str, str]],
    erased: set[uuid.UUID],
    now: datetime,
) -> None:
    """Suppress the addresses providers called dead (an erased recipient's, as digests),
    with a recipient.suppressed event for each address newly suppressed."""
    entries: dict[tuple[uuid.UUID, str, bool], list[tuple[str, str, str, str]]] = defaultdict(list)
    for message, reason, provider in bounced:
        entries[(message.tenant_id, message.mode, message.id in erased)].append(
            (message.channel, message.address, reason, provider)
        )
    announced: list[events.RecipientEvent] = []
    for (tenant_id, mode, was_erased), batch in entries.items():
        added = await add_suppressions(
            session, tenant_id=tenant_id, mode=mode, entries=batch, erased=was_erased
        )
        if was_erased:
            continue  # nothing left to name the recipient by
        for message, reason, _ in bounced:
            key = (message.channel, suppression_key(message.channel, message.address))
            if message.tenant_id == tenant_id and message.mode == mode and key in added:
                added.discard(key)
                announced.append(
                    events.RecipientEvent(
                        message.recipient_id,
                        "recipient.suppressed",
                        {
                            "channel": message.channel,
                            "address": key[1],
                            "reason": reason,
                            "message_id": str(message.id),
                        },
                    )
                )
    await events.record_recipients(session, announced, now)


# One statement for a batch's outcomes, each applied only while its claim still holds
# (`claimed_until` is the claim's token). The same statement writes the events of the sent
# and failed ones for the tenants' endpoints that want them (app/webhooks/events.py), from
# the rows as updated: a written outcome always has its event, at no extra round trip.
_OUTCOMES = text(
    f"""
    WITH o AS (
        SELECT * FROM unnest(
            CAST(:id AS uuid[]), CAST(:token AS timestamptz[]), CAST(:status AS text[]),
            CAST(:provider AS text[]), CAST(:updated_at AS timestamptz[]),
            CAST(:error_class AS text[]), CAST(:last_error AS text[]),
            CAST(:next_attempt_at AS timestamptz[]), CAST(:sent_at AS timestamptz[]),
            CAST(:provider_message_id AS text[]), CAST(:rate_limited_attempts AS int[]),
            CAST(:event_id AS text[]))
        AS o(id, token, status, provider, updated_at, error_class, last_error,
             next_attempt_at, sent_at, provider_message_id, rate_limited_attempts, event_id)
    ),
    moved AS (
        UPDATE messages AS m
           SET status = o.status, provider = o.provider, claimed_until = NULL,
               updated_at = o.updated_at, error_class = o.error_class,
               last_error = o.last_error, next_attempt_at = o.next_attempt_at,
               sent_at = o.sent_at, provider_message_id = o.provider_message_id,
               rate_limited_attempts = o.rate_limited_attempts
          FROM o
         WHERE m.id = o.id AND m.status = 'sending' AND m.claimed_until = o.token
        RETURNING m.id, m.tenant_id, m.mode, m.notification_id, m.recipient_id, m.channel,
                  m.status, m.provider, m.provider_message_id, m.error_class, m.last_error,
                  o.event_id, o.updated_at
    ),
    announced AS (
        INSERT INTO webhook_events (event_id, tenant_id, mode, type, ordering_key, data,
                                    created_at)
        SELECT v.event_id, v.tenant_id, v.mode, 'message.' || v.status, v.id::text,
               {MESSAGE_DATA_SQL.format(m="v", r="r")}, v.updated_at
          FROM moved AS v
          LEFT JOIN recipients AS r ON r.id = v.recipient_id
         WHERE v.status IN ('sent', 'failed')
           AND {WANTED_SQL.format(m="v", type="'message.' || v.status")}
         ORDER BY v.event_id
    )
    SELECT id FROM moved
    """  # noqa: S608 (the fragments are constants)
)
_OUTCOME_COLUMNS = (
    "id",
    "token",
    "status",
    "provider",
    "updated_at",
    "error_class",
    "last_error",
    "next_attempt_at",
    "sent_at",
    "provider_message_id",
    "rate_limited_attempts",
    "event_id",
)


async def _write_outcomes(session: AsyncSession, rows: list[dict[str, Any]]) -> set[uuid.UUID]:
    """Apply outcomes to the messages still claimed by us; the ids that were."""
    for row, identifier in zip(rows, uuid7s(len(rows)), strict=True):
        row["event_id"] = event_id(identifier)  # used only if an endpoint wants the event
    params = {name: [row[name] for row in rows] for name in _OUTCOME_COLUMNS}
    return set((await session.scalars(_OUTCOMES, params)).all())


def _attempt_row(outcome: Sent, started: datetime) -> dict[str, Any]:
    message, result = outcome.send.message, outcome.result
    return {
        "message_id": message.id,
        "tenant_id": message.tenant_id,
        "n": message.attempt,
        "provider": outcome.provider,
        "started_at": started,
        "latency_ms": outcome.latency_ms,
        "outcome": "sent" if result.ok else "failed",
        "error_class": result.error_class,
        "status_code": result.status_code,
        "error": result.error,
    }


def _outcome(message: Claimed, provider: str, result: SendResult, now: datetime) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": message.id,
        "token": message.claimed_until,
        "provider": provider,
        "updated_at": now,
        "error_class": result.error_class,
        "last_error": result.error,
        "next_attempt_at": None,
        "sent_at": None,
        "provider_message_id": result.provider_message_id,
        "rate_limited_attempts": message.rate_limited_attempts,
    }
    if result.ok:
        return {**row, "status": "sent", "sent_at": now}
    rate_limited = result.error_class == "rate_limited"
    if rate_limited:
        row["rate_limited_attempts"] += 1
    at = _next_attempt(message, result, now)
    if at is None:
        return {**row, "status": "failed"}
    return {**row, "status": "retrying", "next_attempt_at": at}


def _next_attempt(message: Claimed, result: SendResult, now: datetime) -> datetime | None:
    """When to try again under the tenant's retry policy; None sends it to the DLQ.

    Rate-limited answers are not spent from the attempt budget, only the time window.
    """
    if result.final or result.error_class not in RETRYABLE_CLASSES:
        return None
    policy = RetryPolicy.of(message.retry_policy)
    rate_limited = result.error_class == "rate_limited"
    spent = message.attempt - message.rate_limited_attempts - (1 if rate_limited else 0)
    if not rate_limited and spent >= policy.max_attempts:
        return None
    if rate_limited and result.retry_after:
        delay = result.retry_after + random.uniform(0, 1)  # spread the herd past the reset
    else:
        delay = retry_delay(max(spent, 1), policy, result.retry_after)
    at = now + timedelta(seconds=delay)
    return at if at <= message.retry_window_from + policy.window else None
