"""Deliver a batch of messages: claim atomically, send with bounded concurrency, record in bulk.

The claim is one UPDATE that moves messages from queued/retrying to sending with a lease;
a message another worker holds, or one cancelled meanwhile, is not claimed. Outcomes are
written with one bulk UPDATE of messages and one INSERT of attempts.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx
import msgspec
import structlog
from prometheus_client import Counter, Histogram
from sqlalchemy import text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import utcnow
from app.delivery.retry import MAX_ATTEMPTS, retry_delay
from app.notifications.models import Attempt, Message
from app.providers.base import OutboundMessage, ProviderAdapter, SendResult
from app.providers.service import ProviderRoute, build_adapter, routes_for
from app.recipients.service import add_suppressions
from app.settings import Settings
from app.templates.content import Content

log = structlog.get_logger(__name__)

CLAIM_LEASE = timedelta(seconds=120)
SEND_CONCURRENCY = 32

MESSAGES_SENT = Counter(
    "herald_messages_total",
    "Messages by final outcome of an attempt",
    ["channel", "provider", "outcome"],
)
SEND_LATENCY = Histogram("herald_provider_latency_seconds", "Provider call latency", ["provider"])

_CLAIM = text(
    """
    UPDATE messages AS m
       SET status = 'sending', claimed_until = now() + :lease, attempts = m.attempts + 1,
           updated_at = now()
      FROM renders AS r, notifications AS n
     WHERE m.id = ANY(:ids)
       AND m.status IN ('queued', 'retrying')
       AND (m.next_attempt_at IS NULL OR m.next_attempt_at <= now())
       AND r.id = m.render_id AND n.id = m.notification_id
    RETURNING m.id, m.tenant_id, m.notification_id, m.recipient_id, m.channel, m.address,
              m.attempts, r.content, n.mode
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
    attempt: int
    content: Content
    mode: str


@dataclass(frozen=True)
class Retry:
    message_id: uuid.UUID
    attempt: int
    at: datetime


@dataclass
class Deliverer:
    """What a worker process keeps between batches: sessions, one HTTP client, built adapters."""

    sessions: async_sessionmaker[AsyncSession]
    http: httpx.AsyncClient
    settings: Settings
    adapters: dict[str, ProviderAdapter] = field(default_factory=dict)

    async def deliver(self, message_ids: list[uuid.UUID]) -> list[Retry]:
        async with self.sessions() as session:
            claimed = await claim(session, message_ids)
            await session.commit()
            if not claimed:
                return []
            routes = await self._routes(session, claimed)
        started = utcnow()
        results = await _send_all(claimed, lambda message: self._send(message, routes))
        async with self.sessions() as session:
            retries = await record(session, claimed, results, started)
            await session.commit()
        return retries

    async def _routes(
        self, session: AsyncSession, claimed: list[Claimed]
    ) -> dict[tuple[uuid.UUID, str, str], list[ProviderRoute]]:
        wanted = {(m.tenant_id, m.channel, m.mode) for m in claimed if m.channel != "inbox"}
        return {
            key: await routes_for(session, tenant_id=key[0], channel=key[1], mode=key[2])
            for key in wanted
        }

    async def _send(
        self, message: Claimed, routes: dict[tuple[uuid.UUID, str, str], list[ProviderRoute]]
    ) -> tuple[str, SendResult]:
        if message.channel == "inbox":  # the inbox is Herald's own store: the row is the delivery
            return "inbox", SendResult(ok=True)
        route = _route_for(
            message, routes.get((message.tenant_id, message.channel, message.mode), [])
        )
        if route is None:
            return "none", SendResult(
                ok=False, error_class="config", error=f"no {message.channel} provider is configured"
            )
        adapter = self._adapter(route)
        outbound = OutboundMessage(
            message_id=message.id,
            tenant_id=message.tenant_id,
            notification_id=message.notification_id,
            channel=message.channel,
            address=message.address,
            content=message.content,
            headers={},
        )
        began = time.perf_counter()
        result = await adapter.send(outbound)
        SEND_LATENCY.labels(route.provider).observe(time.perf_counter() - began)
        return route.provider, result

    def _adapter(self, route: ProviderRoute) -> ProviderAdapter:
        key = f"{route.config_id}:{route.provider}:{hash(msgspec.json.encode(route.credentials))}"
        adapter = self.adapters.get(key)
        if adapter is None:
            adapter = build_adapter(route, http=self.http, settings=self.settings)
            self.adapters[key] = adapter
        return adapter


def _route_for(message: Claimed, routes: list[ProviderRoute]) -> ProviderRoute | None:
    if message.channel == "push" and message.mode != "test":
        platform = message.address.split(":", 1)[0]
        routes = [route for route in routes if route.provider == platform]
    return routes[0] if routes else None


async def claim(session: AsyncSession, message_ids: list[uuid.UUID]) -> list[Claimed]:
    rows = await session.execute(_CLAIM, {"ids": message_ids, "lease": CLAIM_LEASE})
    return [
        Claimed(
            id=row.id,
            tenant_id=row.tenant_id,
            notification_id=row.notification_id,
            recipient_id=row.recipient_id,
            channel=row.channel,
            address=row.address,
            attempt=row.attempts,
            content=msgspec.convert(row.content, Content),
            mode=row.mode,
        )
        for row in rows
    ]


async def _send_all(
    claimed: list[Claimed], send: Callable[[Claimed], Awaitable[tuple[str, SendResult]]]
) -> list[tuple[str, SendResult, int]]:
    gate = asyncio.Semaphore(SEND_CONCURRENCY)

    async def one(message: Claimed) -> tuple[str, SendResult, int]:
        async with gate:
            began = time.perf_counter()
            try:
                provider, result = await send(message)
            except Exception as error:  # an adapter bug must not lose the batch's outcomes
                log.exception("adapter raised", message_id=str(message.id))
                provider, result = (
                    "unknown",
                    SendResult(
                        ok=False,
                        error_class="transient",
                        error=f"internal error: {type(error).__name__}",
                    ),
                )
            return provider, result, int((time.perf_counter() - began) * 1000)

    return list(await asyncio.gather(*(one(message) for message in claimed)))


async def record(
    session: AsyncSession,
    claimed: list[Claimed],
    results: list[tuple[str, SendResult, int]],
    started: datetime,
) -> list[Retry]:
    """Write every outcome in bulk; return the messages to try again, and when."""
    now = utcnow()
    updates: list[dict[str, Any]] = []
    attempts: list[dict[str, Any]] = []
    retries: list[Retry] = []
    suppressions: dict[uuid.UUID, list[tuple[str, str, str, str]]] = {}
    for message, (provider, result, latency_ms) in zip(claimed, results, strict=True):
        update_row = _outcome(message, provider, result, now)
        updates.append(update_row)
        if update_row["status"] == "retrying":
            retries.append(Retry(message.id, message.attempt, update_row["next_attempt_at"]))
        if result.suppress_address:
            reason = "unregistered_device" if message.channel == "push" else "hard_bounce"
            suppressions.setdefault(message.tenant_id, []).append(
                (message.channel, message.address, reason, provider)
            )
        attempts.append(
            {
                "message_id": message.id,
                "tenant_id": message.tenant_id,
                "n": message.attempt,
                "provider": provider,
                "started_at": started,
                "latency_ms": latency_ms,
                "outcome": "sent" if result.ok else "failed",
                "error_class": result.error_class,
                "status_code": result.status_code,
                "error": result.error,
            }
        )
        MESSAGES_SENT.labels(message.channel, provider, update_row["status"]).inc()
    await session.execute(update(Message), updates)
    await session.execute(insert(Attempt), attempts)
    for tenant_id, entries in suppressions.items():
        await add_suppressions(session, tenant_id=tenant_id, entries=entries)
    return retries


def _outcome(message: Claimed, provider: str, result: SendResult, now: datetime) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": message.id,
        "provider": provider,
        "claimed_until": None,
        "updated_at": now,
        "error_class": result.error_class,
        "last_error": result.error,
        "next_attempt_at": None,
        "sent_at": None,
        "provider_message_id": result.provider_message_id,
    }
    if result.ok:
        return {**row, "status": "sent", "sent_at": now}
    retryable = result.error_class in ("transient", "rate_limited")
    if retryable and message.attempt < MAX_ATTEMPTS:
        delay = retry_delay(message.attempt, result.retry_after)
        return {**row, "status": "retrying", "next_attempt_at": now + timedelta(seconds=delay)}
    return {**row, "status": "failed"}
