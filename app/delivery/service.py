"""Deliver a batch of messages: claim, route, send with bounded concurrency, record as they go.

Claimed messages are grouped by tenant, channel and provider routes; the router decides
which route sends each one now and which wait (tokens, open breakers), and the waiting ones
are given back at once. Sends run with bounded concurrency; each outcome goes to the batch's
OutcomeWriter (app/delivery/outcomes.py) as its send finishes, which writes them in small
bulk writes and tells the breakers through the router. What the caller gets back is every
message that must run again, and when: retries, waits, messages a closing breaker released
and, on shutdown, the messages whose send had not started.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import httpx
import msgspec
import structlog
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from prometheus_client import Histogram
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.db import utcnow
from app.delivery.claims import Claimed, claim, release
from app.delivery.outcomes import Due, OutcomeWriter, Sent
from app.delivery.routing import UNGUARDED, Allocation, Router, Send
from app.observability.tracing import parent_context, tracer
from app.providers.base import OutboundMessage, ProviderAdapter, SendResult
from app.providers.service import ProviderRoute, build_adapter, routes_for
from app.settings import Settings
from app.unsubscribe.links import Unsubscribable, UnsubscribeLinks, links_for

__all__ = ["ADAPTER_CACHE_SIZE", "SEND_CONCURRENCY", "AdapterCache", "Deliverer", "Due"]

log = structlog.get_logger(__name__)

SEND_CONCURRENCY = 32
# When Redis (buckets, breakers) cannot be asked, claimed messages wait this long.
ROUTING_UNAVAILABLE_WAIT = timedelta(seconds=5)
NO_PROVIDER = "none"  # the provider recorded when a channel has none configured at all
# Adapters kept per worker process, least recently used dropped first. One adapter serves
# one provider config (and its credentials) for as long as it stays: a worker serving many
# tenants sees many configs, but each adapter is small (credentials, options, a shared HTTP
# client) and cheap to build again, so a few hundred cover the busy ones.
ADAPTER_CACHE_SIZE = 256

SEND_LATENCY = Histogram("herald_provider_latency_seconds", "Provider call latency", ["provider"])

RouteTable = dict[tuple[uuid.UUID, str, str], list[ProviderRoute]]


class AdapterCache:
    """Ready adapters by route (config, provider, credentials), at most `size` of them: the
    least recently used goes when another is built. Adapters hold no connections of their
    own (they share the worker's HTTP client), so dropping one closes nothing."""

    def __init__(
        self, build: Callable[[ProviderRoute], ProviderAdapter], size: int = ADAPTER_CACHE_SIZE
    ) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self.size = size
        self._build = build
        self._adapters: OrderedDict[str, ProviderAdapter] = OrderedDict()

    def __len__(self) -> int:
        return len(self._adapters)

    def get(self, route: ProviderRoute) -> ProviderAdapter:
        key = f"{route.config_id}:{route.provider}:{hash(msgspec.json.encode(route.credentials))}"
        adapter = self._adapters.get(key)
        if adapter is not None:
            self._adapters.move_to_end(key)
            return adapter
        adapter = self._adapters[key] = self._build(route)
        while len(self._adapters) > self.size:
            self._adapters.popitem(last=False)
        return adapter


@dataclass
class Deliverer:
    """What a worker process keeps between batches: sessions, HTTP client, router, adapters."""

    sessions: async_sessionmaker[AsyncSession]
    http: httpx.AsyncClient
    settings: Settings
    router: Router
    adapters: AdapterCache = field(init=False)
    unsubscribe: UnsubscribeLinks = field(init=False)
    # Set on shutdown: sends not yet started are given back instead of made.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.adapters = AdapterCache(
            lambda route: build_adapter(route, http=self.http, settings=self.settings)
        )
        self.unsubscribe = links_for(self.settings)

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
        if allocation.waiting:  # given back now: no need to hold them while the rest go
            async with self.sessions() as session:
                await release(session, allocation.waiting)
                await session.commit()
        writer = OutcomeWriter(
            self.sessions, self.router, now, [s.message for s in allocation.sends]
        )
        writer.start()
        try:
            unstarted = await self._send_all(allocation.sends, writer.add)
            due = await writer.finish()
        finally:
            await writer.cancel()  # a send or the final write raised: stop renewing too
        if unstarted:
            await self.router.report([(send, None) for send in unstarted])
            async with self.sessions() as session:
                await release(session, [(s.message, now) for s in unstarted])
                await session.commit()
        # A message a closing breaker released is due now: not again at its old time.
        released = {d.message_id for d in due if not d.attempt}
        waiting = allocation.waiting + [(s.message, now) for s in unstarted]
        return due + [Due(m.id, m.priority, at) for m, at in waiting if m.id not in released]

    async def _allocate(
        self, claimed: list[Claimed], routes: RouteTable, now: datetime, returning: bool
    ) -> Allocation:
        allocation = Allocation()
        for (tenant_id, channel, mode, platform), group in _groups(claimed).items():
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

    async def _send_all(self, sends: list[Send], done: Callable[[Sent], None]) -> list[Send]:
        """Make the sends, handing each outcome to `done` as it comes; the sends still
        waiting for their turn at shutdown, not made."""
        gate = asyncio.Semaphore(SEND_CONCURRENCY)
        unstarted: list[Send] = []

        async def one(send: Send) -> None:
            async with gate:
                if self.stopping.is_set():
                    unstarted.append(send)
                    return
                done(await self._send(send))

        await asyncio.gather(*(one(send) for send in sends))
        return unstarted

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
        if route is None:
            return NO_PROVIDER, SendResult(
                ok=False,
                error_class="config",
                error=f"no {message.channel} provider is configured",
                final=True,  # nothing to fail over to until the tenant adds one
            )
        content, headers = message.content, dict[str, str]()
        if message.channel == "email":  # test mode too: the sandbox shows what live sends
            content, headers = self.unsubscribe.for_email(
                Unsubscribable(
                    tenant_id=message.tenant_id,
                    mode=message.mode,
                    recipient_id=message.recipient_id,
                    category=message.category,
                    critical=message.critical,
                ),
                message.content,
            )
        outbound = OutboundMessage(
            message_id=message.id,
            tenant_id=message.tenant_id,
            notification_id=message.notification_id,
            channel=message.channel,
            address=message.address,
            content=content,
            headers=headers,
        )
        return route.provider, await self.adapters.get(route).send(outbound)


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
    wanted = {(m.tenant_id, m.channel, m.mode) for m in claimed}
    return {
        key: await routes_for(session, tenant_id=key[0], channel=key[1], mode=key[2])
        for key in wanted
    }
