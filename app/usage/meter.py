"""The usage counters in Redis: the hot path of metering and of quota enforcement.

Every counter lives under the hash tag `{usage}`, so that the scripts below may touch any of
them (one slot in a Redis Cluster), and every decision is one Lua script, atomic against
every other API process and worker:

- `delta`, one hash (field `tenant|period|channel`): what was counted since the last flush.
  A flush renames it to `flush:<id>` (RENAME is atomic: a count lands in exactly one of
  them), lists the id in `flushing`, adds it to PostgreSQL in one transaction that also
  inserts the id into usage_flushes, then deletes it. A crash anywhere is harmless: the next
  flush finds the id in `flushing` and applies it again, which PostgreSQL refuses if it
  already did (service.py). Nothing counted in Redis is lost or counted twice.
- `total:<tenant>:<period>`, a hash per tenant and month: used so far, per channel, read by
  GET /v1/usage and by the quota check. It is seeded once from PostgreSQL plus the deltas not
  flushed yet (under the flush lock, so a flush cannot move a count between the two reads),
  and only then incremented: a count made before the seed is in the deltas the seed reads.
- `holds:<tenant>` and `hold-expiry:<tenant>`: what intake reserved for notifications not
  dispatched yet, per notification and channel. The quota check counts them as used; the
  dispatch that writes the messages takes them back, and a hold whose dispatch never came
  (its API process died before the commit) lapses at its expiry. `held:<tenant>` keeps
  their sum per channel, changed by every script that changes a hold, so that a check
  reads one field per channel: summing every hold made each check cost as much as the
  holds outstanding (a 4,500/s intake fell to 1,400/s).

A period is a calendar month in UTC, written `YYYY-MM`. Only live messages are counted.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from itertools import chain
from typing import Any

import msgspec
from redis.asyncio import Redis

from app.channels import CHANNELS

PREFIX = "herald:usage:{usage}:"
DELTA = PREFIX + "delta"
FLUSHING = PREFIX + "flushing"
LOCK = PREFIX + "lock"
TOTAL_TTL_SECONDS = 70 * 86_400  # a month's totals outlive it: read back for a while
LOCK_MS = 30_000
HOLD_GRACE_MS = 3_600_000  # a hold lapses an hour after its notification was due


def period_of(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m")


def period_start(period: str) -> date:
    year, month = (int(part) for part in period.split("-"))
    return date(year, month, 1)


def next_period_start(period: str) -> datetime:
    """When the period's quota resets: the first instant of the next month, UTC."""
    start = period_start(period)
    year, month = (start.year + 1, 1) if start.month == 12 else (start.year, start.month + 1)
    return datetime(year, month, 1, tzinfo=UTC)


def total_key(tenant_id: uuid.UUID | str, period: str) -> str:
    return f"{PREFIX}total:{tenant_id}:{period}"


_CHANNELS_LUA = "{" + ",".join(f"'{c}'" for c in CHANNELS) + "}"

# ARGV: groups of (tenant, period, channel, n, notification id or '').
_RECORD = f"""
local prefix = '{PREFIX}'
for i = 1, #ARGV, 5 do
  local tenant, period, channel = ARGV[i], ARGV[i+1], ARGV[i+2]
  local n, held = tonumber(ARGV[i+3]), ARGV[i+4]
  redis.call('HINCRBY', prefix .. 'delta', tenant .. '|' .. period .. '|' .. channel, n)
  local total = prefix .. 'total:' .. tenant .. ':' .. period
  if redis.call('EXISTS', total) == 1 then redis.call('HINCRBY', total, channel, n) end
  if held ~= '' then
    local holds = prefix .. 'holds:' .. tenant
    local field = held .. '|' .. channel
    local had = tonumber(redis.call('HGET', holds, field) or '0')
    if had > 0 then
      local used = math.min(had, n)
      if had - used <= 0 then
        redis.call('HDEL', holds, field)
      else
        redis.call('HINCRBY', holds, field, -used)
      end
      redis.call('HINCRBY', prefix .. 'held:' .. tenant, channel, -used)
    end
  end
end
return 1
"""

# What every script that changes holds shares: `drop` gives back one hold field and takes
# it off the tenant's running sum; `lapse` drops every hold of the tenant whose expiry has
# passed; `clock_ms` is Redis's own time.
_HOLDS_LUA = f"""
local prefix = '{PREFIX}'
local function drop(tenant, field, channel)
  local holds, sums = prefix .. 'holds:' .. tenant, prefix .. 'held:' .. tenant
  local n = tonumber(redis.call('HGET', holds, field) or '0')
  if n ~= 0 then
    redis.call('HDEL', holds, field)
    redis.call('HINCRBY', sums, channel, -n)
  end
end
local function clock_ms()
  local clock = redis.call('TIME')
  return tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
end
local function lapse(tenant, now)
  local expiries = prefix .. 'hold-expiry:' .. tenant
  for _, gone in ipairs(redis.call('ZRANGEBYSCORE', expiries, '-inf', now)) do
    for _, channel in ipairs({_CHANNELS_LUA}) do
      drop(tenant, gone .. '|' .. channel, channel)
    end
    redis.call('ZREM', expiries, gone)
  end
end
"""

# ARGV: groups of (tenant, notification id).
_RELEASE = (
    _HOLDS_LUA
    + f"""
for i = 1, #ARGV, 2 do
  for _, channel in ipairs({_CHANNELS_LUA}) do
    drop(ARGV[i], ARGV[i+1] .. '|' .. channel, channel)
  end
  redis.call('ZREM', prefix .. 'hold-expiry:' .. ARGV[i], ARGV[i+1])
end
return 1
"""
)

# ARGV[1]: MessagePack of the requests grouped by tenant and period, in order:
# [[tenant, period, [[notification id, expiry (ms since the epoch, a string), channel, n,
# quota, channel, n, quota, ...], ...]], ...]. One argument, not one per value: redis-py
# packs each argument in Python, which cost intake more than the script itself. Answers only
# the requests not held, as (group, request, status, channel's index, what was left): status
# -1 when the tenant's totals need seeding first, 0 when refused. Each tenant's totals, holds
# and sums are read once per group and written once per group and channel, besides one
# HINCRBY per held (request, channel).
_RESERVE = (
    _HOLDS_LUA
    + """
local now = clock_ms()
local out = {}
local groups = cmsgpack.unpack(ARGV[1])
for g = 1, #groups do
  local tenant, period, asks = groups[g][1], groups[g][2], groups[g][3]
  local raw = redis.call('HGETALL', prefix .. 'total:' .. tenant .. ':' .. period)
  local used, seeded = {}, false
  for j = 1, #raw, 2 do
    if raw[j] == '_seeded' then seeded = true else used[raw[j]] = tonumber(raw[j+1]) end
  end
  if not seeded then
    for a = 1, #asks do
      out[#out+1] = g; out[#out+1] = a; out[#out+1] = -1; out[#out+1] = 0; out[#out+1] = 0
    end
  else
    local holds = prefix .. 'holds:' .. tenant
    local expiries = prefix .. 'hold-expiry:' .. tenant
    local sums = prefix .. 'held:' .. tenant
    lapse(tenant, now)
    -- The running sums, one field per channel: never a walk of every hold.
    local held, added, expiring = {}, {}, {}
    local pairs_ = redis.call('HGETALL', sums)
    for j = 1, #pairs_, 2 do held[pairs_[j]] = tonumber(pairs_[j+1]) end
    for a = 1, #asks do
      local ask = asks[a]
      local refused, left = 0, 0
      for j = 3, #ask, 3 do
        local channel, n, quota = ask[j], ask[j+1], ask[j+2]
        local taken = (used[channel] or 0) + (held[channel] or 0)
        if taken + n > quota then
          refused, left = (j - 3) / 3 + 1, math.max(0, quota - taken)
          break
        end
      end
      if refused == 0 then
        for j = 3, #ask, 3 do
          local channel, n = ask[j], ask[j+1]
          if n > 0 then
            redis.call('HINCRBY', holds, ask[1] .. '|' .. channel, n)
            held[channel] = (held[channel] or 0) + n
            added[channel] = (added[channel] or 0) + n
          end
        end
        expiring[#expiring+1] = ask[2]; expiring[#expiring+1] = ask[1]
      else
        out[#out+1] = g; out[#out+1] = a; out[#out+1] = 0
        out[#out+1] = refused - 1; out[#out+1] = left
      end
    end
    for channel, n in pairs(added) do redis.call('HINCRBY', sums, channel, n) end
    -- ZADD with many members at once, in slices that stay within unpack()'s limit.
    for first = 1, #expiring, 1000 do
      redis.call('ZADD', expiries, unpack(expiring, first, math.min(first + 999, #expiring)))
    end
  end
end
return out
"""
)

# ARGV: tenant, period, notification id, expiry (ms), then (channel, n, quota) triples. Holds
# for the notification as much of each n as its channel's quota has left; the amounts held,
# in order, or {-1} when the tenant's totals need seeding first.
_TAKE = f"""
local prefix = '{PREFIX}'
local tenant, period, notif, expiry = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local total = prefix .. 'total:' .. tenant .. ':' .. period
if redis.call('HEXISTS', total, '_seeded') == 0 then return {{-1}} end
local holds = prefix .. 'holds:' .. tenant
local held = {{}}
local sums = redis.call('HGETALL', prefix .. 'held:' .. tenant)
for j = 1, #sums, 2 do held[sums[j]] = tonumber(sums[j+1]) end
local out = {{}}
for i = 5, #ARGV, 3 do
  local channel, n, quota = ARGV[i], tonumber(ARGV[i+1]), tonumber(ARGV[i+2])
  local used = tonumber(redis.call('HGET', total, channel) or '0') + (held[channel] or 0)
  local granted = math.min(n, math.max(0, quota - used))
  if granted > 0 then
    redis.call('HINCRBY', holds, notif .. '|' .. channel, granted)
    redis.call('HINCRBY', prefix .. 'held:' .. tenant, channel, granted)
  end
  table.insert(out, granted)
end
redis.call('ZADD', prefix .. 'hold-expiry:' .. tenant, expiry, notif)
return out
"""

# ARGV as _TAKE's. Each n is first covered by what the notification holds already (a
# broadcast's audience, held whole before its first page), then by as much as the quota has
# left for the rest (recipients who joined after the count): the amounts covered, in order,
# or {-1} when the tenant's totals need seeding first.
_TAKE_HELD = f"""
local prefix = '{PREFIX}'
local tenant, period, notif, expiry = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local total = prefix .. 'total:' .. tenant .. ':' .. period
if redis.call('HEXISTS', total, '_seeded') == 0 then return {{-1}} end
local holds = prefix .. 'holds:' .. tenant
local held = {{}}
local sums = redis.call('HGETALL', prefix .. 'held:' .. tenant)
for j = 1, #sums, 2 do held[sums[j]] = tonumber(sums[j+1]) end
local out = {{}}
for i = 5, #ARGV, 3 do
  local channel, n, quota = ARGV[i], tonumber(ARGV[i+1]), tonumber(ARGV[i+2])
  local have = tonumber(redis.call('HGET', holds, notif .. '|' .. channel) or '0')
  local covered = math.min(n, math.max(0, have))
  -- The notification's own hold is in the sum already: what is beyond it needs room past it.
  local used = tonumber(redis.call('HGET', total, channel) or '0') + (held[channel] or 0)
  local more = math.min(n - covered, math.max(0, quota - used))
  if more > 0 then
    redis.call('HINCRBY', holds, notif .. '|' .. channel, more)
    redis.call('HINCRBY', prefix .. 'held:' .. tenant, channel, more)
  end
  table.insert(out, covered + more)
end
redis.call('ZADD', prefix .. 'hold-expiry:' .. tenant, expiry, notif)
return out
"""

# ARGV: tenant, period, lease id, expiry (ms), then (channel, n, quota, floor) groups. Holds
# n of a channel for an API process to hand out itself (app/usage/quota.py Leases), only if
# what the quota has left after it is at least `floor`: a lease is never taken near a quota.
# A lease is a hold like any other (counted as used by every check, lapsing at its expiry);
# the amounts held, in order, or {-1} when the tenant's totals need seeding first.
_LEASE = (
    _HOLDS_LUA
    + """
local tenant, period, lease, expiry = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local total = prefix .. 'total:' .. tenant .. ':' .. period
if redis.call('HEXISTS', total, '_seeded') == 0 then return {-1} end
local holds, sums = prefix .. 'holds:' .. tenant, prefix .. 'held:' .. tenant
local expiries = prefix .. 'hold-expiry:' .. tenant
lapse(tenant, clock_ms())
local out, granted = {}, false
for i = 5, #ARGV, 4 do
  local channel, n = ARGV[i], tonumber(ARGV[i+1])
  local quota, floor = tonumber(ARGV[i+2]), tonumber(ARGV[i+3])
  local used = tonumber(redis.call('HGET', total, channel) or '0')
    + tonumber(redis.call('HGET', sums, channel) or '0')
  if quota - used - n >= floor then
    redis.call('HINCRBY', holds, lease .. '|' .. channel, n)
    redis.call('HINCRBY', sums, channel, n)
    table.insert(out, n)
    granted = true
  else
    table.insert(out, 0)
  end
end
if granted then redis.call('ZADD', expiries, expiry, lease) end
return out
"""
)

# ARGV: tenant, period, then (channel, count in PostgreSQL) pairs. Run under the flush lock.
_SEED = f"""
local prefix = '{PREFIX}'
local tenant, period = ARGV[1], ARGV[2]
local total = prefix .. 'total:' .. tenant .. ':' .. period
if redis.call('HEXISTS', total, '_seeded') == 1 then return 0 end
local flushes = redis.call('SMEMBERS', prefix .. 'flushing')
for i = 3, #ARGV, 2 do
  local field = tenant .. '|' .. period .. '|' .. ARGV[i]
  local n = tonumber(ARGV[i+1]) + tonumber(redis.call('HGET', prefix .. 'delta', field) or '0')
  for _, id in ipairs(flushes) do
    n = n + tonumber(redis.call('HGET', prefix .. 'flush:' .. id, field) or '0')
  end
  redis.call('HSET', total, ARGV[i], n)
end
redis.call('HSET', total, '_seeded', 1)
redis.call('EXPIRE', total, {TOTAL_TTL_SECONDS})
return 1
"""

# ARGV: the new flush's id.
_ROTATE = f"""
local prefix = '{PREFIX}'
if redis.call('EXISTS', prefix .. 'delta') == 1 then
  redis.call('RENAME', prefix .. 'delta', prefix .. 'flush:' .. ARGV[1])
  redis.call('SADD', prefix .. 'flushing', ARGV[1])
end
return redis.call('SMEMBERS', prefix .. 'flushing')
"""

_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class Count:
    """Messages of one tenant and channel queued in a period; `held_for`: the notification
    whose intake hold they use up."""

    tenant_id: uuid.UUID
    period: str
    channel: str
    n: int
    held_for: uuid.UUID | None = None


@dataclass(frozen=True)
class Reservation:
    """What one notification asks of its tenant's quota, per channel: (channel, n, quota)."""

    tenant_id: uuid.UUID
    notification_id: uuid.UUID
    period: str
    expires_at: datetime
    wants: Sequence[tuple[str, int, int]]


@dataclass(frozen=True)
class Refusal:
    channel: str
    left: int


class Meter:
    """The counters of one Redis, as the services use them."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._record = redis.register_script(_RECORD)
        self._release = redis.register_script(_RELEASE)
        self._reserve = redis.register_script(_RESERVE)
        self._seed = redis.register_script(_SEED)
        self._take = redis.register_script(_TAKE)
        self._lease = redis.register_script(_LEASE)
        self._take_held = redis.register_script(_TAKE_HELD)
        self._rotate = redis.register_script(_ROTATE)
        self._unlock = redis.register_script(_UNLOCK)

    async def record(self, counts: Iterable[Count]) -> None:
        """Count a batch of messages: one round trip whatever its size."""
        args: list[Any] = []
        for c in counts:
            if c.n:
                args += [str(c.tenant_id), c.period, c.channel, c.n, str(c.held_for or "")]
        if args:
            await self._record(args=args)

    async def release(self, holds: Iterable[tuple[uuid.UUID, uuid.UUID]]) -> None:
        """Give back what (tenant, notification) held at intake, unused."""
        args = [str(part) for hold in holds for part in hold]
        if args:
            await self._release(args=args)

    async def reserve(self, reservations: Sequence[Reservation]) -> list[Refusal | None]:
        """Hold each reservation against its tenant's quota, in order, or refuse it (None:
        held). A Refusal with `left` -1: the tenant's totals must be seeded first, and
        nothing was held for that one. One round trip whatever the batch's size."""
        groups: dict[tuple[uuid.UUID, str], list[int]] = {}
        for index, r in enumerate(reservations):
            groups.setdefault((r.tenant_id, r.period), []).append(index)
        packed = []
        for (tenant_id, period), indexes in groups.items():
            asks = []
            for index in indexes:
                r = reservations[index]
                expiry = int(r.expires_at.timestamp() * 1000) + HOLD_GRACE_MS
                asks.append([str(r.notification_id), str(expiry), *chain.from_iterable(r.wants)])
            packed.append([str(tenant_id), period, asks])
        flat = await self._reserve(args=[msgspec.msgpack.encode(packed)])
        answers: list[Refusal | None] = [None] * len(reservations)
        members = list(groups.values())
        for at in range(0, len(flat), 5):
            group, ask, status, channel, left = (int(v) for v in flat[at : at + 5])
            index = members[group - 1][ask - 1]
            if status == -1:
                answers[index] = Refusal("", -1)
            else:
                answers[index] = Refusal(reservations[index].wants[channel][0], left)
        return answers

    async def take(self, reservation: Reservation) -> list[int] | None:
        """Hold as much of each (channel, n, quota) as the quota has left; what was held
        per channel, in order (None: the tenant's totals must be seeded first)."""
        expiry = int(reservation.expires_at.timestamp() * 1000) + HOLD_GRACE_MS
        args: list[Any] = [
            str(reservation.tenant_id),
            reservation.period,
            str(reservation.notification_id),
            expiry,
        ]
        for channel, n, quota in reservation.wants:
            args += [channel, n, quota]
        granted = [int(v) for v in await self._take(args=args)]
        return None if granted == [-1] else granted

    async def take_held(self, reservation: Reservation) -> list[int] | None:
        """As `take`, but what the notification holds already covers each n first, and the
        quota only what is beyond it; what is covered per channel, in order (None: the
        tenant's totals must be seeded first). The hold's expiry moves on with it."""
        expiry = int(reservation.expires_at.timestamp() * 1000) + HOLD_GRACE_MS
        args: list[Any] = [
            str(reservation.tenant_id),
            reservation.period,
            str(reservation.notification_id),
            expiry,
        ]
        for channel, n, quota in reservation.wants:
            args += [channel, n, quota]
        covered = [int(v) for v in await self._take_held(args=args)]
        return None if covered == [-1] else covered

    async def lease(
        self,
        tenant_id: uuid.UUID,
        period: str,
        expires_at_ms: int,
        wants: Sequence[tuple[str, int, int, int]],
    ) -> list[int] | None:
        """Hold each (channel, n, quota, floor)'s n for a lease lapsing at `expires_at_ms`,
        where the quota keeps at least `floor` left after it; what was held per channel, in
        order (None: the tenant's totals must be seeded first)."""
        args: list[Any] = [str(tenant_id), period, f"lease-{uuid.uuid4()}", expires_at_ms]
        for want in wants:
            args += list(want)
        granted = [int(v) for v in await self._lease(args=args)]
        return None if granted == [-1] else granted

    async def used(self, tenant_id: uuid.UUID, period: str) -> dict[str, int] | None:
        """The period's totals per channel; None when not seeded yet."""
        raw = await self.redis.hgetall(total_key(tenant_id, period))  # type: ignore[misc]
        if b"_seeded" not in raw:
            return None
        return {c: int(raw.get(c.encode(), 0)) for c in CHANNELS}

    async def seed(self, tenant_id: uuid.UUID, period: str, flushed: dict[str, int]) -> None:
        """Start the period's totals from what PostgreSQL holds plus the deltas not flushed
        yet. The caller holds the flush lock (`locked`)."""
        args: list[Any] = [str(tenant_id), period]
        for channel in CHANNELS:
            args += [channel, flushed.get(channel, 0)]
        await self._seed(args=args)

    async def forget_totals(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        if keys:
            await self.redis.delete(*keys)

    async def totals_keys(self, tenant_id: uuid.UUID | None, period: str | None) -> list[str]:
        """The totals keys of a tenant, a period, or all (an operator's rebuild: a SCAN)."""
        pattern = total_key(tenant_id or "*", period or "*")  # braces are not glob syntax
        return [k.decode() async for k in self.redis.scan_iter(match=pattern, count=1000)]

    async def rotate(self) -> list[str]:
        """Move the deltas into a new flush; every flush not finished yet, oldest first."""
        ids = await self._rotate(args=[uuid.uuid4().hex])
        return sorted(i.decode() for i in ids)

    async def flush_counts(self, flush_id: str) -> list[Count]:
        raw = await self.redis.hgetall(PREFIX + "flush:" + flush_id)  # type: ignore[misc]
        counts = []
        for field, n in raw.items():
            tenant, period, channel = field.decode().split("|")
            counts.append(Count(uuid.UUID(tenant), period, channel, int(n)))
        return counts

    async def finish(self, flush_id: str) -> None:
        """The flush is in PostgreSQL: drop it from Redis."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(PREFIX + "flush:" + flush_id)
            pipe.srem(FLUSHING, flush_id)
            await pipe.execute()

    async def lock(self, wait_seconds: float = 10.0) -> str:
        """Take the flush lock (seeds and flushes exclude each other); its token."""
        token = uuid.uuid4().hex
        deadline = asyncio.get_running_loop().time() + wait_seconds
        while not await self.redis.set(LOCK, token, nx=True, px=LOCK_MS):
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError("the usage flush lock is held")
            await asyncio.sleep(0.02)
        return token

    async def unlock(self, token: str) -> None:
        await self._unlock(keys=[LOCK], args=[token])
