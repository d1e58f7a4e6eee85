"""How fast the dashboard's doors may be tried: rate limits, and delays after failed sign-ins.

Rate limits are token buckets in Redis (app/ratelimit/buckets.py), shared by every process
and taken before any password is hashed, so that a flood costs a Redis call per request
rather than 64 MiB and a quarter second of CPU:

| door | per client network | per e-mail address |
|---|---|---|
| sign-in (and a password change) | 20, then 20 a minute | 10, then 10 a minute |
| sign-up | 10, then 10 an hour | 3, then 3 an hour |
| verification or password-reset mail | | 5, then 5 an hour (one bucket for both) |
| password-reset request, or new password | 10, then 10 an hour | |
| accepting an invitation | 10, then 10 an hour | |
| invitations mailed | | (per tenant) 20, then 20 an hour |

A sign-in's e-mail bucket is spent only by attempts whose answer would tell something (not
those refused by the delay below), and not by a browser that signed in to that account
before (app/auth/devices.py): a flood aimed at one account from many networks slows the
attackers without shutting its owner out.

The delay follows OWASP's advice against lock-outs: it is kept per (e-mail, network), so a
failure from one network never holds back the right password from another. After
`max_failures` failures in a row for one e-mail from one network, each further failure
makes the next attempt from there wait 1 s, then 2, 4, … up to `longest_delay`; a success
clears it, and a day without failures forgets it. E-mails are keyed by what was typed,
whether or not an account has it, so unknown and known addresses behave alike.

The clock is the Redis server's (`TIME`), like the token buckets'. When Redis cannot answer,
the checks are skipped with a warning (the hashing pool still bounds the CPU a flood can
take): a limit we cannot read must not lock everyone out of the dashboard.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from dataclasses import dataclass

import structlog
from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from app.ratelimit.buckets import Bucket, TokenBuckets

log = structlog.get_logger(__name__)

REDIS_TIMEOUT = 0.5
FAILURE_MEMORY_SECONDS = 24 * 3600
DELAY_PREFIX = "herald:signin:"
BUCKET_SCOPE = "accounts"  # one Redis Cluster slot: a take may span network and e-mail


@dataclass(frozen=True)
class Limit:
    burst: int
    per_seconds: float  # `burst` more tokens every so many seconds

    @property
    def rate(self) -> float:
        return self.burst / self.per_seconds


SIGN_IN_PER_NETWORK = Limit(20, 60)
SIGN_IN_PER_EMAIL = Limit(10, 60)
SIGN_UP_PER_NETWORK = Limit(10, 3600)
SIGN_UP_PER_EMAIL = Limit(3, 3600)
MAIL_PER_EMAIL = Limit(5, 3600)
PASSWORD_RESET_PER_NETWORK = Limit(10, 3600)
INVITE_ACCEPT_PER_NETWORK = Limit(10, 3600)
INVITES_PER_TENANT = Limit(20, 3600)

# KEYS[1]: the (e-mail, network) hash. ARGV: max failures, longest delay (s), memory (s).
# Returns the delay now due before the next attempt, in whole milliseconds.
_FAILED = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local failures = redis.call('HINCRBY', KEYS[1], 'n', 1)
local free = tonumber(ARGV[1])
local wait = 0
if failures >= free then wait = math.min(tonumber(ARGV[2]), 2 ^ (failures - free)) end
redis.call('HSET', KEYS[1], 'nb', string.format('%.0f', now + wait * 1000000))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return math.ceil(wait * 1000)
"""
# KEYS[1]: the (e-mail, network) hash. Returns the milliseconds still to wait (0: none).
_WAIT = """
local not_before = tonumber(redis.call('HGET', KEYS[1], 'nb'))
if not_before == nil then return 0 end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
if not_before <= now then return 0 end
return math.ceil((not_before - now) / 1000)
"""


class AccountThrottle:
    """The limits above for one process; built once, with the process's Redis client."""

    def __init__(
        self,
        buckets: TokenBuckets,
        redis: Redis,
        secret: bytes,
        *,
        max_failures: int,
        longest_delay: int,
    ) -> None:
        self._buckets = buckets
        self._redis = redis
        self._key = hmac.new(secret, b"herald sign-in throttle", hashlib.sha256).digest()
        self.max_failures = max_failures
        self.longest_delay = longest_delay
        self._failed = redis.register_script(_FAILED)
        self._wait = redis.register_script(_WAIT)

    def email_key(self, email: str) -> str:
        """What limits know an e-mail by: a keyed digest of it as typed (trimmed, lower
        case), so that Redis holds no addresses."""
        typed = email.strip().lower().encode()
        return hmac.new(self._key, typed, hashlib.sha256).hexdigest()[:32]

    async def take(self, *wanted: tuple[str, Limit]) -> float:
        """One token from each (name, limit) at once; 0.0, or the seconds until a retry can
        succeed (nothing taken then)."""
        buckets = [
            Bucket(f"{BUCKET_SCOPE}:{name}", limit.rate, limit.burst) for name, limit in wanted
        ]
        try:
            async with asyncio.timeout(REDIS_TIMEOUT):
                grant = await self._buckets.take(buckets, 1)
        except (RedisError, OSError, TimeoutError) as error:
            _unchecked("rate limit", error)
            return 0.0
        return 0.0 if grant.granted else max(grant.wait, 1.0)

    async def delay(self, email_key: str, network: str) -> float:
        """Seconds the next sign-in for this e-mail from this network must still wait."""
        return await self._call(self._wait, email_key, network)

    async def failed(self, email_key: str, network: str) -> float:
        """Record a failed sign-in; the delay it imposes on the next one, in seconds."""
        args = (self.max_failures, self.longest_delay, FAILURE_MEMORY_SECONDS)
        return await self._call(self._failed, email_key, network, *args)

    async def succeeded(self, email_key: str, network: str) -> None:
        try:
            async with asyncio.timeout(REDIS_TIMEOUT):
                await self._redis.delete(_delay_key(email_key, network))
        except (RedisError, OSError, TimeoutError) as error:
            _unchecked("sign-in delay", error)

    async def _call(self, script: AsyncScript, email_key: str, network: str, *args: int) -> float:
        try:
            async with asyncio.timeout(REDIS_TIMEOUT):
                millis = await script(keys=[_delay_key(email_key, network)], args=args)
        except (RedisError, OSError, TimeoutError) as error:
            _unchecked("sign-in delay", error)
            return 0.0
        return int(millis) / 1000


def _delay_key(email_key: str, network: str) -> str:
    return f"{DELAY_PREFIX}{{{email_key}}}:{network}"


def _unchecked(what: str, error: BaseException) -> None:
    log.warning(
        f"{what} not checked: Redis did not answer; the attempt is let through",
        error=f"{type(error).__name__}: {error}"[:300],
    )
