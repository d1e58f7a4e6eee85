"""Circuit breakers per (tenant, provider config), shared by every worker through Redis.

A breaker watches the outcomes the delivery service reports for one route and stops sending
to a provider that keeps failing, so the channel fails over to its next provider instead of
burning retries (and the tenant's reputation) on a dead one.

- **closed**: every call goes through. Outcomes are counted in three sub-buckets of
  `window / 3` (10 s by default); the window is the current bucket and the two before it,
  so an outcome counts for between 20 and 30 s. When the window holds at least `min_calls`
  outcomes and more than `failure_ratio` of them are failures, the breaker opens.
- **open**: no call goes through until `cool_down` has passed since it opened.
- **half_open**: after the cool-down, exactly one caller, across all processes, gets a probe
  permit. The probe's success closes the breaker (counters reset); its failure re-opens it
  for another cool-down; a probe with neither (the caller did not count its outcome) hands
  the permit back. A permit whose result never arrives (its worker died) expires after
  `probe_timeout`, and the next caller gets a new one.

Messages that wait for a breaker (every route refused them) are noted beside it (`hold`),
with the time they were given; the call that closes the breaker takes the notes back
(`BreakerState.released`), so that those messages go now instead of at that time.

State lives in one Redis hash per breaker, `herald:cb:{<tenant_id>}:<route key>`, hash-tagged
per tenant so that a Redis Cluster keeps a tenant's breakers in one slot (which also lets
`states` read many of them in one script call). Every decision is one Lua script run on the
server's clock (`TIME`), so workers with skewed clocks still agree. Which outcomes count as
failures is the caller's choice (see app/delivery/routing.py): transient and config errors
do; permanent per-address errors and rate limiting say nothing about the provider's health.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, cast

from prometheus_client import Counter
from redis.asyncio import Redis

StateName = Literal["closed", "open", "half_open"]

TRANSITIONS = Counter(
    "herald_breaker_transitions_total",
    "Circuit breaker state changes, by the state entered",
    ["to"],
)

# How long a non-closed breaker with no traffic is kept: long enough that an open breaker
# is not forgotten (and its provider flooded again) just because nobody asked for a while.
IDLE_TTL_SECONDS = 86_400.0

# How long API reads and resets wait for Redis: one that hangs rather than refusing must not
# hang the answer either.
REDIS_TIMEOUT = 2.0


@dataclass(frozen=True)
class BreakerPolicy:
    window: float = 30.0  # seconds of outcomes considered (three sub-buckets)
    min_calls: int = 20  # fewer outcomes than this in the window never open the breaker
    failure_ratio: float = 0.05  # opens when failures / calls is above this
    cool_down: float = 30.0  # seconds an open breaker refuses every call
    probe_timeout: float = 30.0  # seconds before an unanswered probe permit expires

    def __post_init__(self) -> None:
        if not self.window > 0 or not self.cool_down > 0 or not self.probe_timeout > 0:
            raise ValueError("window, cool_down and probe_timeout must be above 0")
        if self.min_calls < 1:
            raise ValueError("min_calls must be at least 1")
        if not 0 <= self.failure_ratio < 1:
            raise ValueError("failure_ratio must be from 0 to below 1")

    def script_args(self) -> list[int]:
        """The policy as the scripts take it: milliseconds, and the ratio in parts per
        million so that the comparison is exact integer arithmetic (1 of 20 is not > 5 %)."""
        return [
            _ms(self.window),
            self.min_calls,
            round(self.failure_ratio * 1_000_000),
            _ms(self.cool_down),
            _ms(self.probe_timeout),
            _ms(IDLE_TTL_SECONDS + self.cool_down + self.probe_timeout),
        ]


@dataclass(frozen=True)
class BreakerState:
    state: StateName
    calls: int  # outcomes in the current window
    failures: int
    opened_at: datetime | None
    retry_at: datetime | None  # open: when a probe may go; half-open: when the probe expires
    # The messages held for this breaker that its closing (this call's) released.
    released: tuple[Held, ...] = ()


@dataclass(frozen=True)
class Admission:
    allowed: int  # how many of the asked calls may go now: all, 1 (the probe) or 0
    probe: bool  # the one permit is the half-open probe: report its outcome with probe=True
    retry_at: datetime | None  # when to come back for the calls not allowed


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


def _time(ms: Any) -> datetime | None:
    value = int(ms)
    return datetime.fromtimestamp(value / 1000, UTC) if value > 0 else None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def route_key_for(config_id: uuid.UUID | None, channel: str) -> str:
    """The breaker's name for a route: the config id, or `sandbox:<channel>` for the
    built-in sandbox, which has no config."""
    return str(config_id) if config_id is not None else f"sandbox:{channel}"


def breaker_key(tenant_id: uuid.UUID, route_key: str) -> str:
    return f"herald:cb:{{{tenant_id}}}:{route_key}"


def held_key(tenant_id: uuid.UUID, route_key: str) -> str:
    """The sorted set of messages waiting for the breaker: `<message id>:<due µs>` members
    scored by the due time. Same hash tag as the breaker: one slot, one script."""
    return f"herald:cbh:{{{tenant_id}}}:{route_key}"


Held = tuple[uuid.UUID, datetime]  # a message waiting for a breaker, and when it is due
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _micros(at: datetime) -> int:
    return (at - _EPOCH) // timedelta(microseconds=1)


def _held(member: Any) -> Held:
    # Exact to the microsecond: the waiting message's due time in PostgreSQL is matched
    # against it (see app/delivery/claims.py, bring_forward).
    message_id, micros = _text(member).split(":")
    return uuid.UUID(message_id), _EPOCH + timedelta(microseconds=int(micros))


# Shared by every script. ARGV[1..6] is the policy (BreakerPolicy.script_args). A breaker's
# hash holds, per sub-bucket slot s (0..2), `b<s>` (the bucket number: ms since the epoch
# // bucket length), `c<s>` (outcomes) and `f<s>` (failures); an open breaker also holds
# `opened_at` and `retry_at` (ms), and `probe_until` while a probe permit is out. No
# `retry_at` means closed; `retry_at` in the past means half-open.
_PRELUDE = """
local WINDOW, MIN_CALLS, RATIO_PPM = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local COOL_DOWN, PROBE_TIMEOUT, IDLE_TTL = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local BUCKETS = 3
local BUCKET = math.ceil(WINDOW / BUCKETS)

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function load(key)
  local flat = redis.call('HGETALL', key)
  local h = {}
  for i = 1, #flat, 2 do h[flat[i]] = tonumber(flat[i + 1]) end
  return h
end

local function totals(h, now)
  local current = math.floor(now / BUCKET)
  local calls, failures = 0, 0
  for slot = 0, BUCKETS - 1 do
    local bucket = h['b' .. slot]
    if bucket and current - bucket < BUCKETS then
      calls = calls + (h['c' .. slot] or 0)
      failures = failures + (h['f' .. slot] or 0)
    end
  end
  return calls, failures
end

-- {state, calls, failures, opened_at, retry_at}; 0 stands for "none" (nil would cut the reply).
local function view(h, now)
  local calls, failures = totals(h, now)
  if not h.retry_at then return {'closed', calls, failures, 0, 0} end
  if now < h.retry_at then return {'open', calls, failures, h.opened_at, h.retry_at} end
  local probe = h.probe_until or 0
  if probe > now then return {'half_open', calls, failures, h.opened_at, probe} end
  return {'half_open', calls, failures, h.opened_at, h.retry_at}
end

local function trip(key, now)
  redis.call('HSET', key, 'opened_at', now, 'retry_at', now + COOL_DOWN)
  redis.call('HDEL', key, 'probe_until')
end
"""

# KEYS[1]: the breaker; ARGV[7]: calls asked (> 0). Returns {allowed, probe, retry_at ms,
# transition}. A closed breaker is only read: admitting costs no write.
_ADMIT = (
    _PRELUDE
    + """
local key, asked = KEYS[1], tonumber(ARGV[7])
local retry_at = tonumber(redis.call('HGET', key, 'retry_at'))
if not retry_at then return {asked, 0, 0, ''} end
local now = now_ms()
if now < retry_at then return {0, 0, retry_at, ''} end
local probe = tonumber(redis.call('HGET', key, 'probe_until')) or 0
if probe > now then return {0, 0, probe, ''} end
redis.call('HSET', key, 'probe_until', now + PROBE_TIMEOUT)
redis.call('PEXPIRE', key, IDLE_TTL)
-- Entering half-open is counted once per cool-down, not again when an expired permit is
-- handed out anew.
return {1, 1, now + PROBE_TIMEOUT, probe == 0 and 'half_open' or ''}
"""
)

# KEYS[1]: the breaker, KEYS[2]: its held messages; ARGV[7..9]: successes, failures, probe
# (1/0). Returns the view followed by the transition ('' when none) and, when the probe
# closed the breaker, the held messages not yet due (taken: the set is deleted).
_RECORD = (
    _PRELUDE
    + """
local key = KEYS[1]
local successes, failures, probe = tonumber(ARGV[7]), tonumber(ARGV[8]), ARGV[9] == '1'
local h = load(key)
local now = now_ms()
local moved = ''
local released = {}
if h.retry_at then
  -- Outcomes of calls admitted before the breaker opened say nothing new: only the probe's
  -- outcome moves an open breaker.
  if probe then
    if failures > 0 then
      trip(key, now)
      moved = 'open'
    elseif successes > 0 then
      redis.call('DEL', key)
      moved = 'closed'
      released = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. (now * 1000), '+inf')
      redis.call('DEL', KEYS[2])
    else
      redis.call('HDEL', key, 'probe_until')
    end
  end
elseif successes + failures > 0 then
  local current = math.floor(now / BUCKET)
  local slot = current % BUCKETS
  if h['b' .. slot] ~= current then
    redis.call('HSET', key, 'b' .. slot, current, 'c' .. slot, 0, 'f' .. slot, 0)
  end
  redis.call('HINCRBY', key, 'c' .. slot, successes + failures)
  redis.call('HINCRBY', key, 'f' .. slot, failures)
  local calls, failed = totals(load(key), now)
  if calls >= MIN_CALLS and failed * 1000000 > RATIO_PPM * calls then
    trip(key, now)
    moved = 'open'
  end
end
h = load(key)
if h.retry_at then
  redis.call('PEXPIRE', key, IDLE_TTL)
elseif next(h) then
  redis.call('PEXPIRE', key, BUCKET * BUCKETS)  -- counts older than the window are useless
end
local reply = view(h, now)
reply[6] = moved
reply[7] = released
return reply
"""
)

# KEYS: breakers of one tenant (one hash slot). Returns their views, flattened.
_STATES = (
    _PRELUDE
    + """
local now = now_ms()
local reply = {}
for _, key in ipairs(KEYS) do
  for _, value in ipairs(view(load(key), now)) do reply[#reply + 1] = value end
end
return reply
"""
)

# KEYS[1]: the held messages; ARGV: pairs of (due µs, member). What is already due is
# dropped, or not noted (its message goes its way anyway); the set lasts until the last
# message in it is due, and a minute longer.
_HOLD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local last = now
for i = 1, #ARGV, 2 do
  local at = tonumber(ARGV[i])
  if at > now then
    redis.call('ZADD', KEYS[1], at, ARGV[i + 1])
    last = math.max(last, at)
  end
end
redis.call('PEXPIRE', KEYS[1], math.floor((last - now) / 1000) + 60000)
return redis.call('ZCARD', KEYS[1])
"""

# KEYS[1]: the breaker, KEYS[2]: the messages held for it. Returns {1 when it was open or
# half-open, else 0; the held messages not yet due}, and forgets both, as a closing probe does.
_RESET = """
local was_open = redis.call('HEXISTS', KEYS[1], 'retry_at')
redis.call('DEL', KEYS[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local released = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. now, '+inf')
redis.call('DEL', KEYS[2])
return {was_open, released}
"""


def _count(transition: Any) -> None:
    name = _text(transition)
    if name:
        TRANSITIONS.labels(to=name).inc()


def _state(values: Sequence[Any], released: Sequence[Any] = ()) -> BreakerState:
    name, calls, failures, opened_at, retry_at = values[:5]
    return BreakerState(
        state=cast(StateName, _text(name)),
        calls=int(calls),
        failures=int(failures),
        opened_at=_time(opened_at),
        retry_at=_time(retry_at),
        released=tuple(_held(member) for member in released),
    )


class CircuitBreakers:
    """The breakers of every tenant and route, under one policy; one per process is enough
    (scripts are registered once and loaded on the server at first use)."""

    def __init__(self, redis: Redis, policy: BreakerPolicy = BreakerPolicy()) -> None:
        self.redis = redis
        self.policy = policy
        self._args = policy.script_args()
        self._admit = redis.register_script(_ADMIT)
        self._record = redis.register_script(_RECORD)
        self._states = redis.register_script(_STATES)
        self._reset = redis.register_script(_RESET)
        self._hold = redis.register_script(_HOLD)

    async def admit(self, tenant_id: uuid.UUID, route_key: str, calls: int) -> Admission:
        """How many of `calls` may go to this route now; one script call."""
        if calls < 0:
            raise ValueError("calls must not be negative")
        if calls == 0:
            return Admission(0, False, None)
        allowed, probe, retry_at, transition = await self._admit(
            keys=[breaker_key(tenant_id, route_key)], args=[*self._args, calls]
        )
        _count(transition)
        allowed = int(allowed)
        return Admission(allowed, bool(int(probe)), _time(retry_at) if allowed < calls else None)

    async def record(
        self,
        tenant_id: uuid.UUID,
        route_key: str,
        *,
        successes: int,
        failures: int,
        probe: bool = False,
    ) -> BreakerState:
        """Count outcomes (trips a closed breaker) or settle the probe (closes or re-opens
        it); the state afterwards, with the messages held for it when this closed it. One
        script call."""
        if successes < 0 or failures < 0:
            raise ValueError("successes and failures must not be negative")
        reply = await self._record(
            keys=[breaker_key(tenant_id, route_key), held_key(tenant_id, route_key)],
            args=[*self._args, successes, failures, int(probe)],
        )
        _count(reply[5])
        return _state(reply, reply[6] if len(reply) > 6 else ())

    async def hold(self, tenant_id: uuid.UUID, route_key: str, held: Sequence[Held]) -> None:
        """Note messages that wait for this breaker, each due at its time: the probe that
        closes the breaker releases them (see `record`). One script call."""
        if not held:
            return
        args: list[Any] = []
        for message_id, at in held:
            micros = _micros(at)
            args += [micros, f"{message_id}:{micros}"]
        await self._hold(keys=[held_key(tenant_id, route_key)], args=args)

    async def states(
        self, tenant_id: uuid.UUID, route_keys: Sequence[str]
    ) -> dict[str, BreakerState]:
        """The state of each route of a tenant, in one round trip: one read-only script
        over all the keys, which share the tenant's hash slot."""
        if not route_keys:
            return {}
        keys = list(dict.fromkeys(route_keys))
        flat = await self._states(
            keys=[breaker_key(tenant_id, key) for key in keys], args=self._args
        )
        return {key: _state(flat[5 * i : 5 * i + 5]) for i, key in enumerate(keys)}

    async def reset(self, tenant_id: uuid.UUID, route_key: str) -> tuple[Held, ...]:
        """Close the breaker by hand and forget its counts; the messages that were waiting
        for it, each with the time it was held until (the caller makes them due now, as
        after a probe's success)."""
        was_open, released = await self._reset(
            keys=[breaker_key(tenant_id, route_key), held_key(tenant_id, route_key)]
        )
        if int(was_open):
            TRANSITIONS.labels(to="closed").inc()
        return tuple(_held(member) for member in released)
