"""The API's intake limit: every /v1 request takes one token from its caller's buckets.

The keys of one tenant in one mode share a bucket with the plan's limits (PlanLimits.api_rate
/ api_burst): holding more keys buys no more requests, and test traffic cannot use up live
requests. A key with a limit of its own also takes from its own bucket, at the same time. The
inbox tokens of one recipient share a small fixed bucket. Over the limit the answer is 429
problem+json with Retry-After and the IETF draft RateLimit-* headers; under it, the
response carries RateLimit-Limit and RateLimit-Remaining.

It runs after authentication (it reads `scope["user"]`) and costs one EVALSHA, sent in one
pipeline with those of the requests that arrive meanwhile. When Redis cannot answer, the
request goes through: accepting a notification depends on PostgreSQL only, and a limit
we cannot check must not become an outage.
"""

from __future__ import annotations

import math
import time

import structlog
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from redis.exceptions import RedisError

from app.auth.keys import Principal
from app.inbox.tokens import RecipientPrincipal
from app.problems import Problem
from app.ratelimit.buckets import (
    Bucket,
    Grant,
    TokenBuckets,
    api_bucket,
    api_key_bucket,
    inbox_bucket,
)
from app.tenants.plans import limits_for

log = structlog.get_logger(__name__)

# A Redis that hangs must not hold requests for long: a round trip of the limits' checks
# gives up after this, and its requests go through. A request that arrives during one
# waits for its end and then for its own: twice this at most.
REDIS_TIMEOUT = 0.5
# Redis down means every request fails open; one warning per this many seconds is enough.
WARNING_INTERVAL = 10.0


class _FailOpenLog:
    """Warns about skipped checks at most once per interval, counting the ones in between."""

    def __init__(self) -> None:
        self._next = 0.0
        self._skipped = 0

    def warn(self, error: BaseException) -> None:
        self._skipped += 1
        now = time.monotonic()
        if now < self._next:
            return
        log.warning(
            "rate limit not checked: Redis did not answer; requests let through",
            error=f"{type(error).__name__}: {error}"[:300],
            requests=self._skipped,
        )
        self._next, self._skipped = now + WARNING_INTERVAL, 0


_fail_open = _FailOpenLog()


def _buckets_for(user: object) -> tuple[Bucket, ...]:
    if isinstance(user, Principal):
        tenant = api_bucket(user.tenant_id, user.mode, limits_for(user.plan))
        if user.key_id is None or user.rate_per_second is None or user.burst is None:
            return (tenant,)
        return (
            tenant,
            api_key_bucket(user.tenant_id, user.key_id, user.rate_per_second, user.burst),
        )
    if isinstance(user, RecipientPrincipal):
        return (inbox_bucket(user.tenant_id, user.recipient_id),)
    return ()


def _whose(user: object, grant: Grant) -> str:
    """Which of the caller's buckets refused, in words (_buckets_for's order)."""
    if isinstance(user, RecipientPrincipal):
        return "this recipient's inbox tokens"
    assert isinstance(user, Principal)
    if grant.bucket != _buckets_for(user)[0].key:
        return "this API key"
    return f"the {user.mode}-mode keys of this tenant together"


def _refusal(user: object, grant: Grant) -> Problem:
    seconds = max(1, math.ceil(grant.wait))
    return Problem(
        429,
        "rate_limited",
        f"Rate limit exceeded: {_whose(user, grant)} may make {grant.rate:g} requests per "
        f"second (bursts of {grant.limit}); retry in {seconds} s.",
        headers={
            "Retry-After": str(seconds),
            "RateLimit-Limit": str(grant.limit),
            "RateLimit-Remaining": "0",
            "RateLimit-Reset": str(seconds),
        },
        retry_after=seconds,
    )


def rate_limit_middleware(app: ASGIApp) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        user = scope.get("user")
        mine = _buckets_for(user) if scope["type"] == ScopeType.HTTP else ()
        if not mine:
            await app(scope, receive, send)
            return
        buckets: TokenBuckets = scope["litestar_app"].state.token_buckets
        try:
            grant = await buckets.take_together(mine, 1)
        except (RedisError, OSError, TimeoutError) as error:
            _fail_open.warn(error)
            await app(scope, receive, send)
            return
        if grant.granted == 0:
            raise _refusal(user, grant)
        extra = [
            (b"ratelimit-limit", str(grant.limit).encode()),
            (b"ratelimit-remaining", str(grant.remaining).encode()),
        ]

        async def send_with_limits(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await app(scope, receive, send_with_limits)

    return middleware
