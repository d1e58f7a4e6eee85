"""Sending events to tenants' webhook endpoints: signed POSTs, retried on the reference schedule.

What this module guarantees:
- every request is signed per Standard Webhooks with the endpoint's live secrets
  (service.signed_headers); `webhook-id` is the event's id on every attempt, the timestamp
  new on each;
- the destination is resolved and checked again at every attempt, and the connection goes to
  the address checked; redirects are never followed (app/providers/ssrf.py);
- 2xx is success; anything else (3xx included), a timeout (REQUEST_TIMEOUT) or a refused
  connection is a failure, retried after SCHEDULE's next wait, or after Retry-After when
  that is longer (up to MAX_RETRY_AFTER); after the last attempt the delivery has failed;
- 410 Gone disables the endpoint: nothing more is sent to it until it is enabled again;
- a due delivery is taken by one sender only (FOR UPDATE SKIP LOCKED) and its outcome is
  written in the same transaction: a sender that dies leaves it due for the next.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import msgspec
import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.crypto import Keyring
from app.db import utcnow
from app.ids import uuid7
from app.providers import ssrf
from app.webhooks.models import WebhookDelivery, WebhookEndpoint
from app.webhooks.service import signed_headers

log = structlog.get_logger(__name__)

# Waits before attempts 1..8 (the Standard Webhooks reference schedule): at once, 5 s, 5 min,
# 30 min, 2 h, 5 h, 10 h, 10 h.
SCHEDULE = (0, 5, 300, 1800, 7200, 18000, 36000, 36000)
REQUEST_TIMEOUT = 15.0  # seconds
MAX_RETRY_AFTER = timedelta(hours=10)
BATCH = 50  # due deliveries taken per round
TEST_EVENT = "webhook.test"


@dataclass(frozen=True)
class Outcome:
    status_code: int | None
    latency_ms: int
    error: str | None
    retry_after: timedelta | None = None

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def event_id() -> str:
    return f"evt_{uuid7().hex}"


def new_delivery(
    endpoint: WebhookEndpoint, event_type: str, data: dict[str, Any], now: datetime
) -> WebhookDelivery:
    """A delivery of one event to `endpoint`, due at once."""
    identifier = event_id()
    return WebhookDelivery(
        id=uuid7(),
        tenant_id=endpoint.tenant_id,
        mode=endpoint.mode,
        endpoint_id=endpoint.id,
        event_id=identifier,
        event_type=event_type,
        payload={
            "id": identifier,
            "type": event_type,
            "timestamp": now.isoformat(),
            "data": data,
        },
        status="pending",
        attempts=0,
        next_attempt_at=now,
        created_at=now,
        updated_at=now,
    )


def _retry_after(response: httpx.Response, now: datetime) -> timedelta | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        wait = timedelta(seconds=max(0, int(value)))
    except ValueError:
        try:
            wait = parsedate_to_datetime(value) - now
        except (TypeError, ValueError, IndexError):
            return None
    return min(max(wait, timedelta(0)), MAX_RETRY_AFTER)


async def post(
    client: httpx.AsyncClient,
    endpoint: WebhookEndpoint,
    delivery: WebhookDelivery,
    keyring: Keyring,
    *,
    allow_private: bool,
) -> Outcome:
    """One signed attempt; never raises for what the endpoint or the network did."""
    body = msgspec.json.encode(delivery.payload)
    headers = {
        "content-type": "application/json",
        "user-agent": "Herald-Webhooks/1",
        **signed_headers(
            endpoint,
            keyring,
            message_id=delivery.event_id,
            body=body,
            timestamp=int(time.time()),
        ),
    }
    started = time.perf_counter()
    try:
        target = await ssrf.pin_url(endpoint.url, allow_private=allow_private)
        response = await ssrf.send_pinned(
            client,
            "POST",
            target,
            headers=headers,
            content=body,
            request_timeout=REQUEST_TIMEOUT,
        )
    except ssrf.UnsafeURL:
        return Outcome(None, _since(started), "the URL's host is not an address Herald will call")
    except (ssrf.UnresolvableHost, httpx.HTTPError, OSError) as error:
        return Outcome(None, _since(started), f"{type(error).__name__}: {error}"[:500])
    return Outcome(
        response.status_code,
        _since(started),
        None if 200 <= response.status_code < 300 else f"HTTP {response.status_code}",
        _retry_after(response, utcnow()),
    )


def _since(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)


def record(
    delivery: WebhookDelivery, endpoint: WebhookEndpoint, outcome: Outcome, now: datetime
) -> None:
    """The attempt's outcome on the delivery (and a 410's on the endpoint)."""
    delivery.attempts += 1
    delivery.last_status_code = outcome.status_code
    delivery.last_latency_ms = outcome.latency_ms
    delivery.last_error = outcome.error
    delivery.updated_at = now
    if outcome.succeeded:
        delivery.status, delivery.next_attempt_at = "succeeded", None
        return
    if outcome.status_code == 410:
        endpoint.enabled = False
        endpoint.updated_at = now
        delivery.status, delivery.next_attempt_at = "failed", None
        return
    if delivery.attempts >= len(SCHEDULE):
        delivery.status, delivery.next_attempt_at = "failed", None
        return
    wait = timedelta(seconds=SCHEDULE[delivery.attempts])
    if outcome.retry_after is not None:
        wait = max(wait, outcome.retry_after)
    delivery.next_attempt_at = now + wait


async def send_due(
    sessions: async_sessionmaker[AsyncSession],
    client: httpx.AsyncClient,
    keyring: Keyring,
    *,
    allow_private: bool,
    clock: Callable[[], datetime] = utcnow,
    limit: int = BATCH,
) -> int:
    """Attempt the deliveries due now (up to `limit`), concurrently; how many were tried."""
    async with sessions() as session:
        now = clock()
        rows = (
            await session.execute(
                select(WebhookDelivery, WebhookEndpoint)
                .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
                .where(
                    WebhookDelivery.status == "pending",
                    WebhookDelivery.next_attempt_at <= now,
                    # A disabled endpoint's deliveries wait for it to be enabled again.
                    WebhookEndpoint.enabled,
                )
                .order_by(WebhookDelivery.next_attempt_at)
                .limit(limit)
                .with_for_update(of=WebhookDelivery, skip_locked=True)
            )
        ).all()
        outcomes = await asyncio.gather(
            *(post(client, e, d, keyring, allow_private=allow_private) for d, e in rows)
        )
        finished = clock()
        for (delivery, endpoint), outcome in zip(rows, outcomes, strict=True):
            record(delivery, endpoint, outcome, finished)
            log.info(
                "webhook attempt",
                delivery_id=str(delivery.id),
                endpoint_id=str(endpoint.id),
                event_id=delivery.event_id,
                status_code=outcome.status_code,
                attempt=delivery.attempts,
                outcome=delivery.status,
            )
        await session.commit()
        return len(rows)


async def send_test(
    session: AsyncSession, endpoint: WebhookEndpoint, now: datetime
) -> WebhookDelivery:
    """A test event for the endpoint, due at once (sent by the next round of send_due)."""
    delivery = new_delivery(
        endpoint, TEST_EVENT, {"endpoint_id": str(endpoint.id), "test": True}, now
    )
    session.add(delivery)
    await session.flush()
    return delivery


async def deliveries_of(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    mode: str,
    endpoint_id: uuid.UUID,
    limit: int,
) -> list[WebhookDelivery]:
    """The endpoint's deliveries, newest first."""
    found = await session.scalars(
        select(WebhookDelivery)
        .where(
            WebhookDelivery.tenant_id == tenant_id,
            WebhookDelivery.mode == mode,
            WebhookDelivery.endpoint_id == endpoint_id,
        )
        .order_by(WebhookDelivery.id.desc())
        .limit(limit)
    )
    return list(found)


@dataclass(frozen=True)
class Sender:
    """What a worker process sends tenants' events with."""

    sessions: async_sessionmaker[AsyncSession]
    client: httpx.AsyncClient
    keyring: Keyring
    allow_private: bool

    async def send_due(self, *, rounds: int = 3) -> int:
        """Rounds of send_due until fewer than a batch were due; how many were tried."""
        tried = 0
        for _ in range(rounds):
            count = await send_due(
                self.sessions, self.client, self.keyring, allow_private=self.allow_private
            )
            tried += count
            if count < BATCH:
                break
        return tried
