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
  so does failing for FAILING_LIMIT (every attempt since the first failure failed), and
  then the tenant's owners are told;
- a message's events reach an endpoint in the order they were written: a delivery waits
  while an earlier event of the same ordering key is pending for the same endpoint (an
  event that finally failed no longer holds the later ones back);
- a due delivery is taken by one sender only (FOR UPDATE SKIP LOCKED) and its outcome is
  written in the same transaction: a sender that dies leaves it due for the next.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import msgspec
import structlog
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import aliased

from app.audit import service as audit
from app.auth import roles
from app.auth.mailer import SystemMailer
from app.auth.models import Membership, User
from app.crypto import DecryptionError, Keyring
from app.db import utcnow
from app.ids import uuid7
from app.notifications import completion
from app.pagination import Page, in_index_order, keyset_page
from app.providers import ssrf
from app.tenants.models import Tenant
from app.tenants.plans import limits_for
from app.webhooks import fanout
from app.webhooks.models import WebhookDelivery, WebhookEndpoint
from app.webhooks.service import MANAGE, signed_headers

log = structlog.get_logger(__name__)

# Waits before attempts 1..8 (the Standard Webhooks reference schedule): at once, 5 s, 5 min,
# 30 min, 2 h, 5 h, 10 h, 10 h.
SCHEDULE = (0, 5, 300, 1800, 7200, 18000, 36000, 36000)
REQUEST_TIMEOUT = 15.0  # seconds
MAX_RETRY_AFTER = timedelta(hours=10)
BATCH = 100  # due deliveries taken per round
FAILING_LIMIT = timedelta(days=5)
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
    endpoint: WebhookEndpoint,
    event_type: str,
    data: dict[str, Any],
    now: datetime,
    retention: timedelta,
) -> WebhookDelivery:
    """A delivery of one event to `endpoint`, due at once, kept for `retention`."""
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
        retain_until=now + retention,
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
    try:
        signature = signed_headers(
            endpoint, keyring, message_id=delivery.event_id, body=body, timestamp=int(time.time())
        )
    except DecryptionError:
        # A secret sealed under a key the keyring no longer holds: this endpoint's attempt
        # fails (and is retried, should the key come back), the round goes on for others.
        return Outcome(None, 0, "the endpoint's signing secret cannot be decrypted")
    headers = {
        "content-type": "application/json",
        "user-agent": "Herald-Webhooks/1",
        **signature,
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


GONE = "the endpoint answered 410 Gone"
FAILING = "every attempt failed for 5 days"


def record(
    delivery: WebhookDelivery, endpoint: WebhookEndpoint, outcome: Outcome, now: datetime
) -> str | None:
    """The attempt's outcome on the delivery and its endpoint; why this attempt disabled
    the endpoint, if it did."""
    delivery.attempts += 1
    delivery.last_status_code = outcome.status_code
    delivery.last_latency_ms = outcome.latency_ms
    delivery.last_error = outcome.error
    delivery.updated_at = now
    if outcome.succeeded:
        delivery.status, delivery.next_attempt_at = "succeeded", None
        endpoint.failing_since = None
        return None
    if endpoint.failing_since is None:
        endpoint.failing_since = now
    disabled = None
    if outcome.status_code == 410:
        disabled = GONE
    elif now - endpoint.failing_since >= FAILING_LIMIT and endpoint.enabled:
        disabled = FAILING
    if disabled is not None and endpoint.enabled:
        endpoint.enabled = False
        endpoint.disabled_reason = disabled
        endpoint.updated_at = now
    if outcome.status_code == 410 or delivery.attempts >= len(SCHEDULE):
        delivery.status, delivery.next_attempt_at = "failed", None
        return disabled
    wait = timedelta(seconds=SCHEDULE[delivery.attempts])
    if outcome.retry_after is not None:
        wait = max(wait, outcome.retry_after)
    delivery.next_attempt_at = now + wait
    return disabled


Earlier = aliased(WebhookDelivery)

# A pending delivery of an earlier event of the same ordering key to the same endpoint.
_EARLIER = (
    select(Earlier.id)
    .where(
        Earlier.endpoint_id == WebhookDelivery.endpoint_id,
        Earlier.ordering_key == WebhookDelivery.ordering_key,
        Earlier.event_seq < WebhookDelivery.event_seq,
        Earlier.status == "pending",
    )
    .exists()
)


async def send_due(
    sessions: async_sessionmaker[AsyncSession],
    client: httpx.AsyncClient,
    keyring: Keyring,
    *,
    allow_private: bool,
    clock: Callable[[], datetime] = utcnow,
    limit: int = BATCH,
) -> Sent:
    """Attempt the deliveries due now (up to `limit`), concurrently."""
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
                    ~_EARLIER,
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
        disabled: list[tuple[WebhookEndpoint, str]] = []
        for (delivery, endpoint), outcome in zip(rows, outcomes, strict=True):
            reason = record(delivery, endpoint, outcome, finished)
            if reason is not None:
                disabled.append((endpoint, reason))
                await audit.append(
                    session,
                    tenant_id=endpoint.tenant_id,
                    actor="herald",
                    action="webhook_endpoint.disabled",
                    target=str(endpoint.id),
                    details={"reason": reason, "mode": endpoint.mode},
                )
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
        return Sent(len(rows), [(e.tenant_id, e.id, e.url, r) for e, r in disabled])


@dataclass(frozen=True)
class Tick:
    completed: int  # notifications found complete
    fanned_out: int  # events turned into deliveries
    tried: int  # delivery attempts


@dataclass(frozen=True)
class Sent:
    tried: int
    # Endpoints this round disabled: (tenant, endpoint, url, reason), for their owners.
    disabled: list[tuple[uuid.UUID, uuid.UUID, str, str]]


async def send_test(
    session: AsyncSession,
    endpoint: WebhookEndpoint,
    now: datetime,
    *,
    actor: str,
    role: str | None = None,
) -> WebhookDelivery:
    """A test event for the endpoint, due at once (sent by the next round of send_due).

    `endpoint` was read under the caller's tenant and mode; a member's role must be one that
    may manage webhooks."""
    roles.require(role, MANAGE)
    plan = await session.scalar(select(Tenant.plan).where(Tenant.id == endpoint.tenant_id))
    delivery = new_delivery(
        endpoint,
        TEST_EVENT,
        {"endpoint_id": str(endpoint.id), "test": True},
        now,
        timedelta(days=limits_for(plan or "free").log_retention_days),
    )
    session.add(delivery)
    await session.flush()
    await audit.append(
        session,
        tenant_id=endpoint.tenant_id,
        actor=actor,
        action="webhook_endpoint.test_sent",
        target=str(endpoint.id),
        details={"mode": endpoint.mode, "delivery_id": str(delivery.id)},
    )
    return delivery


async def resend(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    mode: str,
    endpoint_id: uuid.UUID,
    delivery_id: uuid.UUID,
    now: datetime,
    actor: str,
    role: str | None = None,
) -> WebhookDelivery | None:
    """Make a delivery due again at once, with the same event id; None if not found.

    A delivery that had finished (succeeded or failed) gets one more attempt; a pending one
    is brought forward. Its later events to the endpoint wait for it again while it is
    pending, as they did the first time. A member's role must be one that may manage
    webhooks."""
    roles.require(role, MANAGE)
    delivery = await session.scalar(
        select(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.endpoint_id == endpoint_id,
            WebhookDelivery.tenant_id == tenant_id,
            WebhookDelivery.mode == mode,
        )
        .with_for_update()
    )
    if delivery is None:
        return None
    if delivery.status != "pending":
        # One more attempt: record() ends it after this one, whatever its count was.
        delivery.attempts = max(delivery.attempts, len(SCHEDULE) - 1)
    delivery.status = "pending"
    delivery.next_attempt_at = now
    delivery.updated_at = now
    await session.flush()
    await audit.append(
        session,
        tenant_id=tenant_id,
        actor=actor,
        action="webhook_delivery.resent",
        target=str(delivery.id),
        details={"mode": mode, "endpoint_id": str(endpoint_id), "event_id": delivery.event_id},
    )
    return delivery


async def delete_expired(session: AsyncSession, now: datetime, *, limit: int = 5_000) -> int:
    """Delete up to `limit` finished deliveries past their plan's log retention."""
    expired = (
        select(WebhookDelivery.id)
        .where(WebhookDelivery.status != "pending", WebhookDelivery.retain_until < now)
        .order_by(WebhookDelivery.retain_until)
        .limit(limit)
        .scalar_subquery()
    )
    result = await session.execute(delete(WebhookDelivery).where(WebhookDelivery.id.in_(expired)))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


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


async def delivery_page(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    mode: str,
    endpoint_id: uuid.UUID,
    limit: int,
    cursor: uuid.UUID | None = None,
    status: str | None = None,
) -> Page[WebhookDelivery]:
    """A page of the endpoint's delivery log, newest first, after `cursor` (a delivery id).

    Reads ix_webhook_deliveries_endpoint_id_id (or, by status,
    ix_webhook_deliveries_endpoint_id_status_id) backwards: a page costs `limit` index
    entries, whatever the statistics say."""
    query = select(WebhookDelivery).where(
        WebhookDelivery.tenant_id == tenant_id,
        WebhookDelivery.mode == mode,
        WebhookDelivery.endpoint_id == endpoint_id,
    )
    if status is not None:
        query = query.where(WebhookDelivery.status == status)
    async with in_index_order(session):
        return await keyset_page(session, query, WebhookDelivery.id, limit=limit, cursor=cursor)


@dataclass
class Sender:
    """What a worker process sends tenants' events with."""

    sessions: async_sessionmaker[AsyncSession]
    client: httpx.AsyncClient
    keyring: Keyring
    allow_private: bool
    mailer: SystemMailer | None = None  # tells owners of an endpoint disabled for failing
    fanout_rounds: int = 10
    # Where the next round of notification.completed checks starts.
    _completion_after: uuid.UUID | None = field(default=None, init=False)

    async def run(self) -> Tick:
        """A tick: complete what finished, fan the outbox out, attempt what is due."""
        async with self.sessions() as session:
            done = await completion.complete(session, utcnow(), after=self._completion_after)
            await session.commit()
        self._completion_after = done.last_id
        fanned = 0
        for _ in range(self.fanout_rounds):
            async with self.sessions() as session:
                taken = await fanout.fan_out(session, utcnow())
            if not taken:  # none left, or another worker's round holds the lock
                break
            fanned += taken
        return Tick(done.completed, fanned, await self.send_due())

    async def send_due(self, *, rounds: int = 10) -> int:
        """Rounds of send_due until fewer than a batch were due; how many were tried."""
        tried = 0
        for _ in range(rounds):
            sent = await send_due(
                self.sessions, self.client, self.keyring, allow_private=self.allow_private
            )
            tried += sent.tried
            for tenant_id, endpoint_id, url, reason in sent.disabled:
                await self.tell_owners(tenant_id, endpoint_id, url, reason)
            if sent.tried < BATCH:
                break
        return tried

    async def tell_owners(
        self, tenant_id: uuid.UUID, endpoint_id: uuid.UUID, url: str, reason: str
    ) -> None:
        """Mail the tenant's owners that Herald disabled one of their endpoints."""
        log.warning(
            "webhook endpoint disabled", endpoint_id=str(endpoint_id), url=url, reason=reason
        )
        if self.mailer is None:
            return
        async with self.sessions() as session:
            owners = list(
                await session.scalars(
                    select(User.email)
                    .join(Membership, Membership.user_id == User.id)
                    .where(Membership.tenant_id == tenant_id, Membership.role == "owner")
                )
            )
        for owner in owners:
            await self.mailer.send(
                to=owner,
                subject="Herald disabled one of your webhook endpoints",
                text=(
                    f"Herald stopped sending events to {url} (endpoint {endpoint_id}): "
                    f"{reason}.\n\nEvents for it are kept. Enable the endpoint again "
                    f"(PUT /v1/webhook-endpoints/{endpoint_id} with enabled: true) once it "
                    "answers, and Herald sends what waited."
                ),
            )
