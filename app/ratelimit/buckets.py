"""Token buckets in Redis, shared by every process: one Lua script call per decision.

A bucket holds up to `burst` tokens and refills at `rate` tokens per second. `take` debits
n tokens from several buckets at once, atomically: it grants as many as the emptiest bucket
holds (possibly fewer than asked, possibly none) and takes that many from each, so a batch
of deliveries asks once for the tenant's and the provider's buckets together.

Each bucket is a Redis hash {t: tokens as a float string, ts: last refill in microseconds
of the Redis server's clock}. The server's clock (`TIME`) is the only clock: processes on
machines whose clocks disagree still share one rate. A key expires once it would have
refilled to full, so idle buckets vanish; a missing key is a full bucket.

Keys are `herald:tb:{<scope>}:<rest>` where `Bucket.key` is `<scope>:<rest>`: the scope is
the tenant id, a Redis Cluster hash tag, so all of one tenant's buckets live in one slot
and a single script may touch them together. Build keys with the helpers below.

`CostBuckets` is for work whose cost is known only afterwards (render time): it reserves
up to an amount before the work and settles with what the work cost after it, which may
leave the bucket in debt (down to minus one burst); nothing is granted until the debt is
repaid by the refill.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from app.tenants.plans import PlanLimits

KEY_PREFIX = "herald:tb:"
# The fixed limits of one recipient's inbox token: one person's front-end, whatever the plan.
INBOX_RATE = 10.0
INBOX_BURST = 50

# KEYS: the buckets. ARGV[1]: n, then rate and burst of each bucket in KEYS' order, then
# the mode: 0 takes what there is and puts the rest at the end of the line, 1 (at head)
# puts the rest at its head, 2 (whole) takes all n or nothing and leaves the line alone.
# Returns {granted, remaining, wait in whole microseconds, 1-based index of the limiting
# bucket, turn}: Redis truncates Lua numbers to integers on the way out, so no fractions
# leave. `wait` is until the limiting bucket holds a whole token (mode 2: all n tokens).
_TAKE = """
local n = tonumber(ARGV[1])
local mode = tonumber(ARGV[#KEYS * 2 + 2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local levels = {}
local granted = n
for i = 1, #KEYS do
  local rate = tonumber(ARGV[2 * i])
  local burst = tonumber(ARGV[2 * i + 1])
  local state = redis.call('HMGET', KEYS[i], 't', 'ts')
  local level = tonumber(state[1])
  local last = tonumber(state[2])
  if level == nil or last == nil then
    level = burst
  elseif now > last then
    level = math.min(burst, level + (now - last) * rate / 1000000)
  else
    level = math.min(burst, level)
  end
  levels[i] = level
  granted = math.min(granted, math.floor(level))
end
if granted < 0 then granted = 0 end
if mode == 2 and granted < n then granted = 0 end
local needed = 1
if mode == 2 and granted == 0 then needed = n end
local limiting, worst_wait, worst_left = 1, -1, nil
for i = 1, #KEYS do
  local rate = tonumber(ARGV[2 * i])
  local burst = tonumber(ARGV[2 * i + 1])
  local left = levels[i] - granted
  local wait = 0
  if left < needed then wait = (needed - left) / rate end
  if wait > worst_wait or (wait == worst_wait and left < worst_left) then
    limiting, worst_wait, worst_left = i, wait, left
  end
  -- Nothing taken: the stored level refills to the same value later, so leave it be.
  if granted > 0 then
    redis.call('HSET', KEYS[i], 't', string.format('%.17g', left), 'ts', string.format('%.0f', now))
    redis.call('PEXPIRE', KEYS[i], math.ceil((burst - left) / rate * 1000) + 1000)
  end
end
-- The line: messages not granted now are told when their turn comes. The limiting bucket
-- keeps the time its line ends (q); the first of them waits for the later of that time
-- and the next token, and the line grows by one token interval per message. Callers
-- that come back at their turn find tokens there, instead of all at the first token.
-- Callers whose turn has come already (ARGV[#KEYS * 2 + 2] = 1) and still found too few
-- tokens go to the head of the line: they wait for the next tokens, and the line's end
-- moves back by as many, since the tokens they missed were used by others.
local rest = n - granted
local turn = 0
if rest > 0 and mode ~= 2 then
  local key = KEYS[limiting]
  local rate = tonumber(ARGV[2 * limiting])
  local at_head = mode == 1
  local line_end = tonumber(redis.call('HGET', key, 'q')) or 0
  local next_token = now + worst_wait * 1000000
  local first = math.max(line_end, next_token)
  local new_end = first + rest * 1000000 / rate
  if at_head then
    first = next_token
    new_end = math.max(line_end, next_token) + rest * 1000000 / rate
  end
  redis.call('HSET', key, 'q', string.format('%.0f', new_end))
  local keep = math.ceil((new_end - now) / 1000) + 1000
  if redis.call('PTTL', key) < keep then redis.call('PEXPIRE', key, keep) end
  turn = first - now
end
return {granted, math.floor(worst_left), math.ceil(worst_wait * 1000000), limiting,
        math.ceil(turn)}
"""


@dataclass(frozen=True)
class Bucket:
    """One bucket: `key` is `<tenant id>:<kind>[:<id>…]`; its first segment is the hash tag.

    Every bucket of one `take` must share that first segment (one Redis Cluster slot).
    """

    key: str  # e.g. "<tenant uuid>:tenant", "<tenant uuid>:provider:<config uuid>"
    rate: float  # tokens per second
    burst: int  # capacity

    def __post_init__(self) -> None:
        if not self.rate > 0 or self.burst < 1:
            raise ValueError(f"bucket {self.key}: rate must be > 0 and burst >= 1")
        if not self.key.partition(":")[0] or ":" not in self.key:
            raise ValueError(f"bucket key {self.key!r} must be <scope>:<name>")

    @property
    def scope(self) -> str:
        return self.key.partition(":")[0]

    @property
    def redis_key(self) -> str:
        scope, _, rest = self.key.partition(":")
        return f"{KEY_PREFIX}{{{scope}}}:{rest}"


@dataclass(frozen=True)
class Grant:
    granted: int  # tokens taken (0..n)
    remaining: int  # whole tokens left in the limiting bucket after the take
    wait: float  # seconds until the limiting bucket holds a whole token (0.0 if it does)
    rate: float  # the limiting bucket's rate: spread deferred work at it
    limit: int  # the limiting bucket's burst
    # Seconds until the turn of the first message not granted, in the limiting bucket's
    # line; the k-th after it comes k / rate later (0.0 when all were granted).
    turn: float = 0.0
    bucket: str = ""  # the limiting bucket's key


# KEYS[1]: the bucket. ARGV: rate, burst, want, least, adjust. `adjust` is added first (a
# settlement: unused reservation back, or the overrun taken); then, if the level holds at
# least `least`, up to `want` is granted and taken. Returns {granted, wait} in whole
# microseconds: wait is 0 when something was granted, else until the level reaches `least`.
_SPEND = """
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local want, least, adjust = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local state = redis.call('HMGET', KEYS[1], 't', 'ts')
local level = tonumber(state[1])
local last = tonumber(state[2])
if level == nil or last == nil then
  level = burst
elseif now > last then
  level = math.min(burst, level + (now - last) * rate / 1000000)
end
level = math.max(-burst, math.min(burst, level + adjust))
local granted = 0
if want > 0 and level >= least then
  granted = math.min(want, level)
  level = level - granted
end
redis.call('HSET', KEYS[1], 't', string.format('%.17g', level), 'ts', string.format('%.0f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - level) / rate * 1000) + 1000)
local wait = 0
if granted == 0 and level < least then wait = (least - level) / rate end
return {math.floor(granted * 1000000), math.ceil(wait * 1000000)}
"""


@dataclass(frozen=True)
class Reservation:
    granted: float  # amount reserved (0 when the bucket held less than asked as the least)
    wait: float  # seconds until it holds that least (0.0 when something was granted)


class CostBuckets:
    """Buckets charged by what work cost, known after it: reserve, work, then settle."""

    def __init__(self, redis: Redis) -> None:
        self._script = redis.register_script(_SPEND)

    async def reserve(self, bucket: Bucket, want: float, *, least: float) -> Reservation:
        """Take up to `want` if the bucket holds at least `least` (<= its burst), else
        nothing. Raises redis.exceptions.RedisError (or OSError) when Redis is unreachable."""
        return await self._spend(bucket, want, min(least, bucket.burst), 0.0)

    async def settle(self, bucket: Bucket, reserved: float, cost: float) -> None:
        """Give back what a reservation did not use, or take what the work cost beyond it."""
        if reserved != cost:
            await self._spend(bucket, 0.0, 0.0, reserved - cost)

    async def _spend(self, bucket: Bucket, want: float, least: float, adjust: float) -> Reservation:
        args = [bucket.rate, bucket.burst, want, least, adjust]
        granted_us, wait_us = await self._script(keys=[bucket.redis_key], args=args)
        return Reservation(int(granted_us) / 1_000_000, int(wait_us) / 1_000_000)


def render_bucket(tenant_id: uuid.UUID | str, mode: str, limits: PlanLimits) -> Bucket:
    """The tenant's render time in one mode, in milliseconds: previews and dispatches
    together. Test renders have a budget of their own, so they never delay live sends."""
    return Bucket(f"{tenant_id}:render:{mode}", limits.render_ms_rate, limits.render_ms_burst)


def tenant_bucket(tenant_id: uuid.UUID | str, mode: str, limits: PlanLimits) -> Bucket:
    """The tenant's send bucket of one mode: messages handed to providers, all channels
    together. Test sends have a bucket of their own, so they never slow live ones."""
    return Bucket(f"{tenant_id}:tenant:{mode}", limits.send_rate, limits.send_burst)


def provider_bucket(
    tenant_id: uuid.UUID | str, config: uuid.UUID | str, rate: float, burst: int
) -> Bucket:
    """One provider account of the tenant (a provider config id, or a provider's name)."""
    return Bucket(f"{tenant_id}:provider:{config}", rate, burst)


def api_bucket(tenant_id: uuid.UUID | str, mode: str, limits: PlanLimits) -> Bucket:
    """API requests made with every key of the tenant in one mode: however many keys it
    holds, a tenant gets its plan's rate; test keys cannot use up the live requests."""
    return Bucket(f"{tenant_id}:api:{mode}", limits.api_rate, limits.api_burst)


def api_key_bucket(
    tenant_id: uuid.UUID | str, key_id: uuid.UUID | str, rate: float, burst: int
) -> Bucket:
    """API requests made with one key that has a limit of its own (below its tenant's)."""
    return Bucket(f"{tenant_id}:apikey:{key_id}", rate, burst)


def inbox_bucket(tenant_id: uuid.UUID | str, recipient_id: uuid.UUID | str) -> Bucket:
    """API requests made with inbox tokens of one recipient, whichever token it is."""
    return Bucket(f"{tenant_id}:inbox:{recipient_id}", INBOX_RATE, INBOX_BURST)


class TokenBuckets:
    """Takes tokens from buckets kept in Redis; build one per process and share it.

    `take` asks Redis at once. `take_together` is for many small callers (one token per
    API request): the takes of callers that arrive while one round trip is in flight go
    out together in the next, as one script call per set of buckets in one pipeline.
    """

    def __init__(self, redis: Redis, *, batch_timeout: float | None = None) -> None:
        self._redis = redis
        self._script = redis.register_script(_TAKE)
        self._batch_timeout = batch_timeout
        self._waiting: list[tuple[tuple[Bucket, ...], int, asyncio.Future[Grant]]] = []
        self._flusher: asyncio.Task[None] | None = None
        # One waiting room per set of buckets: (its lock, how many callers use it).
        self._rooms: dict[tuple[str, ...], tuple[asyncio.Lock, int]] = {}

    async def take(self, buckets: Sequence[Bucket], n: int, *, at_head: bool = False) -> Grant:
        """Take up to n tokens from every bucket at once; n=0 only reports.

        Grants min(n, whole tokens of the emptiest bucket) and debits that many from each;
        `turn` says when those not granted may come back. `at_head`: the caller's turn has
        come already, so what it lacks goes to the head of the line, not the end.
        Raises redis.exceptions.RedisError (or OSError) when Redis cannot be reached.
        """
        keys, args = _call(buckets, n, MODE_AT_HEAD if at_head else MODE_LINE)
        return _grant(buckets, await self._script(keys=keys, args=args))

    async def take_in_turn(self, buckets: Sequence[Bucket], n: int, *, hold: float) -> Grant:
        """For callers whose turn in the line comes now: wait here for the tokens.

        Such callers were told their turn by `take` and came back a little before it (a job
        runs late by its queue's poll and the machine's load; one that arrives after its
        tokens were made would find them spilt over the burst, and the rate lost). The
        callers of one process wait in line for the same buckets, first come first served;
        the first asks Redis for its tokens, all at once or none (so tokens are never held
        unsent while more are awaited), sleeps until they should be there, and asks again.
        What it did not get within `hold` seconds, or beyond half the smallest burst, goes
        to the head of the bucket's line as with `take(at_head=True)`, whose turn the
        returned grant carries.
        """
        piece = min(n, max(1, min(bucket.burst for bucket in buckets) // 2))
        deadline = asyncio.get_running_loop().time() + hold
        room = tuple(bucket.redis_key for bucket in buckets)
        lock, users = self._rooms.get(room, (asyncio.Lock(), 0))
        self._rooms[room] = (lock, users + 1)
        whole: Grant | None = None
        try:
            # Only the wait for the room is cut short: a script call cancelled half-way
            # could have taken tokens that nobody then uses.
            async with asyncio.timeout_at(deadline):
                await lock.acquire()
            try:
                whole = await self._whole(buckets, piece, deadline)
            finally:
                lock.release()
        except TimeoutError:
            pass
        finally:
            lock, users = self._rooms[room]
            if users == 1:
                del self._rooms[room]
            else:
                self._rooms[room] = (lock, users - 1)
        granted = whole.granted if whole is not None else 0
        if whole is not None and granted == n:
            return whole
        rest = await self.take(buckets, n - granted, at_head=True)
        return dataclasses.replace(rest, granted=granted + rest.granted)

    async def _whole(self, buckets: Sequence[Bucket], n: int, deadline: float) -> Grant | None:
        """n tokens at once, asked for again when they should be there; None past deadline."""
        loop = asyncio.get_running_loop()
        keys, args = _call(buckets, n, MODE_WHOLE)
        while True:
            grant = _grant(buckets, await self._script(keys=keys, args=args))
            if grant.granted:
                return grant
            if loop.time() + grant.wait > deadline:
                return None
            await asyncio.sleep(grant.wait)

    async def take_together(self, buckets: Sequence[Bucket], n: int) -> Grant:
        """Like take, sharing a round trip with the takes of concurrent callers.

        The takes of one set of buckets waiting for the same round trip are summed into
        one script call, and what it granted is handed out in the order they came: each
        gets what it would have got alone, one after the other. `batch_timeout` bounds each
        round trip (TimeoutError for all its callers), so a caller waits at most the rest
        of the round trip in flight and then its own.
        """
        _call(buckets, n)  # refuse bad arguments in the caller, not in the batch
        future: asyncio.Future[Grant] = asyncio.get_running_loop().create_future()
        self._waiting.append((tuple(buckets), n, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, []
            takes: dict[tuple[Bucket, ...], list[tuple[int, asyncio.Future[Grant]]]] = {}
            for buckets, n, future in batch:
                takes.setdefault(buckets, []).append((n, future))
            try:
                async with asyncio.timeout(self._batch_timeout):
                    results = await self._pipelined(
                        [(buckets, sum(n for n, _ in calls)) for buckets, calls in takes.items()]
                    )
            except Exception as error:  # every caller of the batch hears of it
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            for (buckets, callers), result in zip(takes.items(), results, strict=True):
                for future, grant in zip(
                    (future for _, future in callers),
                    _shares(_grant(buckets, result), [n for n, _ in callers]),
                    strict=True,
                ):
                    if not future.done():
                        future.set_result(grant)

    async def _pipelined(self, takes: list[tuple[tuple[Bucket, ...], int]]) -> list[Any]:
        # EVALSHA in a plain pipeline: redis-py's script objects would add a SCRIPT EXISTS
        # round trip to every pipeline. A NOSCRIPT answer (a Redis restart, SCRIPT FLUSH)
        # loads the script and asks again.
        for attempt in range(2):
            pipe = self._redis.pipeline(transaction=False)
            for buckets, n in takes:
                keys, args = _call(buckets, n)
                pipe.evalsha(self._script.sha, len(keys), *keys, *(str(a) for a in args))
            results: list[Any] = await pipe.execute(raise_on_error=False)
            if not any(isinstance(r, NoScriptError) for r in results) or attempt:
                break
            await self._redis.script_load(_TAKE)
        for result in results:
            if isinstance(result, Exception):
                raise result
        return results


def _shares(total: Grant, wants: list[int]) -> list[Grant]:
    """What each of several callers would have been granted, had they taken one after the
    other what `total` granted them together (their wants, summed, in this order)."""
    shares = []
    handed = 0  # tokens granted to the callers before this one
    asked = 0  # tokens asked by the callers before this one
    for want in wants:
        granted = min(want, total.granted - handed)
        handed += granted
        asked += want
        # Left in the limiting bucket after this caller: what the last one left, plus
        # what the callers after this one took.
        remaining = total.remaining + total.granted - handed
        short = granted < want
        shares.append(
            dataclasses.replace(
                total,
                granted=granted,
                remaining=remaining,
                wait=total.wait if short or remaining < 1 else 0.0,
                # The k-th token not granted has its turn k / rate after the first.
                turn=total.turn + (asked - want + granted - total.granted) / total.rate
                if short
                else 0.0,
            )
        )
    return shares


MODE_LINE, MODE_AT_HEAD, MODE_WHOLE = 0, 1, 2  # see _TAKE


def _call(
    buckets: Sequence[Bucket], n: int, mode: int = MODE_LINE
) -> tuple[list[str], list[float | int]]:
    if not buckets:
        raise ValueError("take needs at least one bucket")
    if n < 0:
        raise ValueError("n must be >= 0")
    scope = buckets[0].scope
    if any(bucket.scope != scope for bucket in buckets):
        raise ValueError("the buckets of one take must share their scope (one Cluster slot)")
    args: list[float | int] = [n]
    for bucket in buckets:
        args += (bucket.rate, bucket.burst)
    args.append(mode)
    return [bucket.redis_key for bucket in buckets], args


def _grant(buckets: Sequence[Bucket], result: Any) -> Grant:
    granted, remaining, wait_us, limiting, turn_us = result
    by = buckets[int(limiting) - 1]
    return Grant(
        int(granted),
        int(remaining),
        int(wait_us) / 1_000_000,
        by.rate,
        by.burst,
        int(turn_us) / 1_000_000,
        by.key,
    )
