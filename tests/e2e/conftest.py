"""Each browser test starts with the account limits of a fresh machine.

Every browser test signs up (and some sign in, reset passwords, accept invitations) from
127.0.0.1 against the run's one Redis: the per-network limits (sign-up: 10 an hour) would
otherwise refuse the later tests for what the earlier ones did. The limits themselves are
tested in tests/integration/auth.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from app.auth.throttle import BUCKET_SCOPE, DELAY_PREFIX
from app.ratelimit.buckets import KEY_PREFIX
from app.runtime import ServiceUrls


@pytest.fixture(autouse=True)
async def fresh_account_limits(service_urls: ServiceUrls) -> AsyncIterator[None]:
    redis = Redis.from_url(service_urls.redis_url)
    try:
        for pattern in (f"{KEY_PREFIX}{{{BUCKET_SCOPE}}}:*", f"{DELAY_PREFIX}*"):
            async for key in redis.scan_iter(match=pattern, count=1_000):
                await redis.delete(key)
    finally:
        await redis.aclose()
    yield
