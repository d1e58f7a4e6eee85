"""Which provider sends each claimed message now, and which messages wait.

For one group of messages (same tenant, channel and provider routes) the routes are tried
in priority order. A route's circuit breaker admits some calls (all when closed, one probe
when half-open, none when open); those go to the next route (failover). Admitted calls
take tokens from the tenant's bucket and the route's bucket in one Redis call; messages
that get none are given back until their turn in the buckets' line, spread at the
limiting rate, so no worker sleeps holding them long: they come back just before their
turn and wait in the worker for their tokens, at most TURN_HOLD. High-priority messages
take their tokens first and join the line at its head, so a tenant's own backlog never
holds its codes and resets behind it. With every route's
breaker open, messages wait for the earliest probe rather than fail, noted beside each
breaker that refused them.

The router is the one place that talks to the breakers: it asks them before sends
(`allocate`) and tells them how the sends went (`report`), which is when a probe's success
closes a breaker and hands back the messages that were waiting for it.

The inbox is a built-in route like the sandbox: Herald's own store, where the message row
is the delivery, so it has neither a breaker nor buckets.
"""

from __future__ import annotations

import math
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog
from prometheus_client import Counter
from redis.exceptions import RedisError

from app.delivery.claims import Claimed
from app.providers.base import SendResult
from app.providers.breaker import CircuitBreakers, Held, route_key_for
from app.providers.service import ProviderRoute
from app.ratelimit.buckets import Bucket, TokenBuckets, provider_bucket, tenant_bucket
from app.tenants.plans import limits_for

log = structlog.get_logger(__name__)

# Breakers guard real provider accounts; the sandbox's outcomes are chosen by address,
# so its simulated failures must not trip anything, and the inbox is Herald's own store.
UNGUARDED = ("sandbox", "inbox")
UNMETERED = ("inbox",)  # no provider's rate to keep to, nor the tenant's sending rate
FAILURE_CLASSES = ("transient", "config")  # what a breaker counts against a provider
JITTER_ALLOWANCE = 0.075  # seconds of a provider's rate kept back from its burst
# Waiting groups are due this long before their turn (a job starts late by its queue's poll
# and the machine's load), and wait in the worker up to TURN_HOLD for their tokens.
TURN_LEAD = 0.25
TURN_HOLD = 1.0

DEFERRED = Counter(
    "herald_messages_deferred_total", "Messages put back to wait, by reason", ["reason"]
)


@dataclass(frozen=True)
class Send:
    message: Claimed
    route: ProviderRoute | None  # None: a channel with no provider at all
    probe: bool = False  # the half-open breaker's one trial call


@dataclass
class Allocation:
    sends: list[Send] = field(default_factory=list)
    waiting: list[tuple[Claimed, datetime]] = field(default_factory=list)  # not an attempt


@dataclass
class Router:
    buckets: TokenBuckets
    breakers: CircuitBreakers

    async def allocate(
        self,
        messages: Sequence[Claimed],
        routes: Sequence[ProviderRoute],
        now: datetime,
        *,
        returning: bool = False,
    ) -> Allocation:
        """Messages of one tenant and channel, and that channel's routes by priority.

        `returning`: the messages waited for their turn already; what they still lack puts
        them at the head of the bucket's line.
        """
        allocation = Allocation()
        if not routes:
            allocation.sends += [Send(message, None) for message in messages]
            return allocation
        pending = list(messages)
        retry_at: datetime | None = None
        for route in routes:
            if not pending:
                break
            admitted, probe, route_retry = await self._admit(route, pending)
            if route_retry is not None:
                retry_at = min(retry_at or route_retry, route_retry)
            chosen, pending = pending[:admitted], pending[admitted:]
            await self._take_tokens(route, chosen, probe, now, allocation, returning)
        # Every route refused (breakers open): wait for the first probe, not an attempt,
        # or for whichever of those breakers closes first.
        wake = retry_at or now + timedelta(seconds=1)
        allocation.waiting += [(message, wake) for message in pending]
        if pending:
            DEFERRED.labels("breaker_open").inc(len(pending))
            await self._hold(routes, pending, wake)
        return allocation

    async def _hold(
        self, routes: Sequence[ProviderRoute], pending: list[Claimed], wake: datetime
    ) -> None:
        held = [(message.id, wake) for message in pending]
        for route in routes:
            if route.provider in UNGUARDED:
                continue
            key = route_key_for(route.config_id, route.channel)
            try:
                await self.breakers.hold(pending[0].tenant_id, key, held)
            except RedisError as error:  # they still go at `wake`, only not sooner
                log.warning("held messages not noted", route=key, error=str(error))

    async def report(self, outcomes: Sequence[tuple[Send, SendResult | None]]) -> list[Held]:
        """Tell each guarded route's breaker its successes and failures (None: a send that
        was not made); the messages that a probe's success released, each with the time it
        was held until.

        Rate limiting and a bad address say nothing of a provider's health: they count as
        neither, and a probe that ended so, or was not made, hands its permit back."""
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
        released: list[Held] = []
        for (tenant_id, route_key, probe), (successes, failures) in tally.items():
            if not (successes or failures or probe):
                continue
            try:
                state = await self.breakers.record(
                    tenant_id, route_key, successes=successes, failures=failures, probe=probe
                )
            except RedisError as error:
                log.warning("breaker not updated", route=route_key, error=str(error))
                continue
            released += state.released
        return released

    async def _admit(
        self, route: ProviderRoute, pending: list[Claimed]
    ) -> tuple[int, bool, datetime | None]:
        if route.provider in UNGUARDED:
            return len(pending), False, None
        tenant_id = pending[0].tenant_id
        key = route_key_for(route.config_id, route.channel)
        admission = await self.breakers.admit(tenant_id, key, len(pending))
        return admission.allowed, admission.probe, admission.retry_at

    async def _take_tokens(
        self,
        route: ProviderRoute,
        chosen: list[Claimed],
        probe: bool,
        now: datetime,
        allocation: Allocation,
        returning: bool,
    ) -> None:
        if not chosen:
            return
        if route.provider in UNMETERED:
            allocation.sends += [Send(m, route) for m in chosen]
            return
        # High priority first, and at the head of the buckets' line: a tenant's own backlog
        # (a campaign draining at its rate) must not hold its codes and resets behind it.
        # The tokens they take move the line's end back by as many.
        urgent = [m for m in chosen if m.priority == "high"]
        rest = [m for m in chosen if m.priority != "high"]
        for part, first in ((urgent, True), (rest, False)):
            if part:
                await self._take_for(route, part, probe, now, allocation, returning, first)
                probe = False  # one probe per allocation: it went with the first part

    async def _take_for(
        self,
        route: ProviderRoute,
        chosen: list[Claimed],
        probe: bool,
        now: datetime,
        allocation: Allocation,
        returning: bool,
        at_head: bool,
    ) -> None:
        buckets = _buckets(route, chosen[0])
        if returning:  # came back a little before its turn: waits for it here
            grant = await self.buckets.take_in_turn(buckets, len(chosen), hold=TURN_HOLD)
        else:
            grant = await self.buckets.take(buckets, len(chosen), at_head=at_head)
        allocation.sends += [Send(m, route, probe) for m in chosen[: grant.granted]]
        rest = chosen[grant.granted :]
        if probe and not grant.granted:  # the probe waits for a token: let another caller probe
            key = route_key_for(route.config_id, route.channel)
            await self.breakers.record(
                chosen[0].tenant_id, key, successes=0, failures=0, probe=True
            )
        # Each message has its own turn in the bucket's line, so deferred batches of every
        # worker come back as the bucket refills, not all at the next token. They come back
        # in groups of no more than half the burst, TURN_LEAD before their last member's
        # turn, and wait in the worker for their tokens (TokenBuckets.take_in_turn): a group
        # that came late would find the tokens made meanwhile spilt over the burst.
        size = max(1, grant.limit // 2)
        for start in range(0, len(rest), size):
            group = rest[start : start + size]
            last_turn = grant.turn + (start + len(group) - 1) / grant.rate
            at = now + timedelta(seconds=max(0.0, last_turn - TURN_LEAD))
            allocation.waiting += [(message, at) for message in group]
        DEFERRED.labels("rate_limit").inc(len(rest))


def _buckets(route: ProviderRoute, message: Claimed) -> list[Bucket]:
    tenant = tenant_bucket(message.tenant_id, message.mode, limits_for(message.plan))
    if route.config_id is None:  # the sandbox: no provider account to protect
        return [tenant]
    provider = provider_bucket(
        message.tenant_id, route.config_id, route.rate_per_second, provider_burst(route)
    )
    return [tenant, provider]


def provider_burst(route: ProviderRoute) -> int:
    """The burst Herald lets itself use of a provider's contract.

    A token is taken a little before the request reaches the provider, and that delay
    varies (event loop, connection, scheduling). Requests taken apart can arrive together,
    so part of the burst is kept back to absorb it: what `JITTER_ALLOWANCE` seconds of the
    rate would bring. The provider then sees no second above rate + burst.
    """
    return max(1, route.burst - math.ceil(route.rate_per_second * JITTER_ALLOWANCE))
