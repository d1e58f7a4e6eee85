"""Deliver a batch of messages: claim, route, send with bounded concurrency, record in bulk.

Claimed messages are grouped by tenant, channel and provider routes; the router decides
which provider sends each one now and which wait (tokens, open breakers). Sends run with
bounded concurrency; outcomes are written with one bulk UPDATE of messages and one INSERT
of attempts, and each route's breaker hears how its calls went. What the caller gets back
is every message that must run again, and when: retries, waits and, on shutdown, the
messages whose send had not started.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx
import msgspec
import structlog
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from prometheus_client import Counter, Histogram
from redis.exceptions import RedisError
from sqlalchemy import text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import utcnow
from app.delivery.claims import Claimed, claim, release
from app.delivery.retry import RetryPolicy, retry_delay
from app.delivery.routing import UNGUARDED, Allocation, Router, Send
from app.notifications.models import Attempt
from app.observability.tracing import parent_context, tracer
from app.providers.base import OutboundMessage, ProviderAdapter, SendResult
from app.providers.breaker import route_key_for
from app.providers.service import ProviderRoute, build_adapter, routes_for
from app.recipients.service import ERASED_TEXT, add_suppressions, erased_messages
from app.settings import Settings

log = structlog.get_logger(__name__)

SEND_CONCURRENCY = 32
# When Redis (buckets, breakers) cannot be asked, claimed messages wait this long.
ROUTING_UNAVAILABLE_WAIT = timedelta(seconds=5)
FAILURE_CLASSES = ("transient", "config")  # what a breaker counts against a provider
# Tried again later (config: after its breaker opens, through the channel's next provider).
RETRYABLE_CLASSES = ("transient", "rate_limited", "config")
NO_PROVIDER = "none"  # the provider recorded when a channel has none configured at all

MESSAGES_SENT = Counter(
    "herald_messages_total",
    "Messages by final outcome of an attempt",
    ["channel", "provider", "outcome"],
)
SEND_LATENCY = Histogram("herald_provider_latency_seconds", "Provider call latency", ["provider"])

RouteTable = dict[tuple[uuid.UUID, str, str], list[ProviderRoute]]


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


@dataclass
class Deliverer:
    """What a worker process keeps between batches: sessions, HTTP client, router, adapters."""

    sessions: async_sessionmaker[AsyncSession]
    http: httpx.AsyncClient
    settings: Settings
    router: Router
    adapters: dict[str, ProviderAdapter] = field(default_factory=dict)
    # Set on shutdown: sends not yet started are given back instead of made.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    async def deliver(
        self, message_ids: Sequence[uuid.UUID], *, returning: bool = False
    ) -> list[Due]:
        """Send what may go now; return every message to run again, and when.

        `returning`: these messages were given back to wait for tokens and their turn has
        come (see Router.allocate).
        """
        async with self.sessions() as session:
            claimed = await claim(session, message_ids)
            await session.commit()
            if not claimed:
                return []
            routes = await _routes(session, claimed)
        now = utcnow()
        allocation = await self._allocate(claimed, routes, now, returning)
        outcomes = await self._send_all(allocation.sends)
        started = [o for o in outcomes if isinstance(o, Sent)]
        unstarted = [o for o in outcomes if isinstance(o, Send)]
        waiting = allocation.waiting + [(s.message, now) for s in unstarted]
        await self._tell_breakers(started, unstarted)
        async with self.sessions() as session:
            retries = await record(session, started, now)
            await release(session, waiting)
            await session.commit()
        return retries + [Due(m.id, m.priority, at) for m, at in waiting]

    async def _allocate(
        self, claimed: list[Claimed], routes: RouteTable, now: datetime, returning: bool
    ) -> Allocation:
        allocation = Allocation()
        for (tenant_id, channel, mode, platform), group in _groups(claimed).items():
            if channel == "inbox":  # Herald's own store: no provider, no tokens
                allocation.sends += [Send(message, None) for message in group]
                continue
            candidates = [
                r
                for r in routes.get((tenant_id, channel, mode), [])
                if not platform or r.provider == platform or r.provider in UNGUARDED
            ]
            try:
                part = await self.router.allocate(group, candidates, now, returning=returning)
            except RedisError as error:
                log.warning("routing unavailable: messages wait", error=str(error))
                part = Allocation(waiting=[(m, now + ROUTING_UNAVAILABLE_WAIT) for m in group])
            allocation.sends += part.sends
            allocation.waiting += part.waiting
        return allocation

    async def _send_all(self, sends: list[Send]) -> list[Sent | Send]:
        """Every send's outcome; a send still waiting for its turn at shutdown comes back as is."""
        gate = asyncio.Semaphore(SEND_CONCURRENCY)

        async def one(send: Send) -> Sent | Send:
            async with gate:
                if self.stopping.is_set():
                    return send
                return await self._send(send)

        return list(await asyncio.gather(*(one(send) for send in sends)))

    async def _send(self, send: Send) -> Sent:
        message, route = send.message, send.route
        began = time.perf_counter()
        with tracer().start_as_current_span(
            f"herald.send {message.channel}",
            context=parent_context(message.trace_context),
            kind=SpanKind.CLIENT,
            attributes={
                "herald.message_id": str(message.id),
                "herald.notification_id": str(message.notification_id),
                "herald.attempt": message.attempt,
            },
        ) as span:
            try:
                provider, result = await self._call(message, route)
            except Exception as error:  # an adapter bug must not lose the batch's outcomes
                log.exception("adapter raised", message_id=str(message.id))
                provider = route.provider if route else "unknown"
                result = SendResult(
                    ok=False,
                    error_class="transient",
                    error=f"internal error: {type(error).__name__}",
                )
            _describe(span, provider, result)
        elapsed = time.perf_counter() - began
        if route is not None:
            SEND_LATENCY.labels(route.provider).observe(elapsed)
        return Sent(send, provider, result, int(elapsed * 1000))

    async def _call(self, message: Claimed, route: ProviderRoute | None) -> tuple[str, SendResult]:
        if message.channel == "inbox":  # the inbox is Herald's own store: the row is the delivery
            return "inbox", SendResult(ok=True)
        if route is None:
            return NO_PROVIDER, SendResult(
                ok=False,
                error_class="config",
                error=f"no {message.channel} provider is configured",
                final=True,  # nothing to fail over to until the tenant adds one
            )
        outbound = OutboundMessage(
            message_id=message.id,
            tenant_id=message.tenant_id,
            notification_id=message.notification_id,
            channel=message.channel,
            address=message.address,
            content=message.content,
            headers={},
        )
        return route.provider, await self._adapter(route).send(outbound)

    def _adapter(self, route: ProviderRoute) -> ProviderAdapter:
        key = f"{route.config_id}:{route.provider}:{hash(msgspec.json.encode(route.credentials))}"
        adapter = self.adapters.get(key)
        if adapter is None:
            adapter = build_adapter(route, http=self.http, settings=self.settings)
            self.adapters[key] = adapter
        return adapter

    async def _tell_breakers(self, started: list[Sent], unstarted: list[Send]) -> None:
        """Each guarded route's successes and failures. Rate limiting and a bad address say
        nothing of a provider's health: they count as neither, and a probe that ended so, or
        was not made, hands its permit back."""
        outcomes = [(o.send, o.result) for o in started] + [(s, None) for s in unstarted]
        tally: dict[tuple[uuid.UUID, str, bool], list[int]] = defaultdict(lambda: [0, 0])
        for send, result in outcomes:
            route = send.route
            if route is None or route.provider in UNGUARDED:
                continue
            counts = tally[
                (send.message.tenant_id, route_key_for(route.config_id, route.channel), send.probe)
            ]
            if result is not None and result.ok:
                counts[0] += 1
            elif result is not None and result.error_class in FAILURE_CLASSES:
                counts[1] += 1
        for (tenant_id, route_key, probe), (successes, failures) in tally.items():
            if not (successes or failures or probe):
                continue
            try:
                await self.router.breakers.record(
                    tenant_id, route_key, successes=successes, failures=failures, probe=probe
                )
            except RedisError as error:
                log.warning("breaker not updated", route=route_key, error=str(error))


def _describe(span: Span, provider: str, result: SendResult) -> None:
    span.set_attribute("herald.provider", provider)
    if result.status_code is not None:
        span.set_attribute("herald.status_code", result.status_code)
    if result.ok:
        return
    span.set_attribute("herald.error_class", result.error_class or "unknown")
    span.set_status(Status(StatusCode.ERROR, result.error))


def _groups(claimed: list[Claimed]) -> dict[tuple[uuid.UUID, str, str, str], list[Claimed]]:
    groups: dict[tuple[uuid.UUID, str, str, str], list[Claimed]] = defaultdict(list)
    for message in claimed:
        platform = message.platform if message.mode == "live" else ""
        groups[(message.tenant_id, message.channel, message.mode, platform)].append(message)
    return groups


async def _routes(session: AsyncSession, claimed: list[Claimed]) -> RouteTable:
    wanted = {(m.tenant_id, m.channel, m.mode) for m in claimed if m.channel != "inbox"}
    return {
        key: await routes_for(session, tenant_id=key[0], channel=key[1], mode=key[2])
        for key in wanted
    }


async def record(session: AsyncSession, started: list[Sent], now: datetime) -> list[Due]:
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
    await _suppress(session, bounced, erased)
    return retries


async def _suppress(
    session: AsyncSession, bounced: list[tuple[Claimed, str, str]], erased: set[uuid.UUID]
) -> None:
    """Suppress the addresses providers called dead; an erased recipient's, as digests."""
    entries: dict[tuple[uuid.UUID, str, bool], list[tuple[str, str, str, str]]] = defaultdict(list)
    for message, reason, provider in bounced:
        entries[(message.tenant_id, message.mode, message.id in erased)].append(
            (message.channel, message.address, reason, provider)
        )
    for (tenant_id, mode, was_erased), batch in entries.items():
        await add_suppressions(
            session, tenant_id=tenant_id, mode=mode, entries=batch, erased=was_erased
        )


# One statement for a batch's outcomes, each applied only while its claim still holds
# (`claimed_until` is the claim's token).
_OUTCOMES = text(
    """
    UPDATE messages AS m
       SET status = o.status, provider = o.provider, claimed_until = NULL,
           updated_at = o.updated_at, error_class = o.error_class, last_error = o.last_error,
           next_attempt_at = o.next_attempt_at, sent_at = o.sent_at,
           provider_message_id = o.provider_message_id,
           rate_limited_attempts = o.rate_limited_attempts
      FROM unnest(CAST(:id AS uuid[]), CAST(:token AS timestamptz[]), CAST(:status AS text[]),
                  CAST(:provider AS text[]), CAST(:updated_at AS timestamptz[]),
                  CAST(:error_class AS text[]), CAST(:last_error AS text[]),
                  CAST(:next_attempt_at AS timestamptz[]), CAST(:sent_at AS timestamptz[]),
                  CAST(:provider_message_id AS text[]), CAST(:rate_limited_attempts AS int[]))
           AS o(id, token, status, provider, updated_at, error_class, last_error,
                next_attempt_at, sent_at, provider_message_id, rate_limited_attempts)
     WHERE m.id = o.id AND m.status = 'sending' AND m.claimed_until = o.token
    RETURNING m.id
    """
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
)


async def _write_outcomes(session: AsyncSession, rows: list[dict[str, Any]]) -> set[uuid.UUID]:
    """Apply outcomes to the messages still claimed by us; the ids that were."""
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
