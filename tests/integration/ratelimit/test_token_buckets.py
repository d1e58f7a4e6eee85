"""Token buckets on the real Redis: bursts, partial grants, refill, concurrency, key layout."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from app.ratelimit import (
    Bucket,
    TokenBuckets,
    api_bucket,
    provider_bucket,
    tenant_bucket,
)
from app.runtime import ServiceUrls
from app.tenants.plans import PlanLimits, limits_for, plan_names

# A rate so slow that nothing refills during a test: one token per ~3 hours.
FROZEN = 0.0001


@pytest.fixture
async def redis(service_urls: ServiceUrls) -> AsyncIterator[Redis]:
    client = Redis.from_url(service_urls.redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def buckets(redis: Redis) -> TokenBuckets:
    return TokenBuckets(redis)


def scope() -> str:
    """A tenant id of this test's own, so no two tests share a bucket."""
    return str(uuid.uuid4())


def test_every_plan_has_limits_and_unknown_plans_get_free() -> None:
    assert {"free", "pro", "scale", "starter", "growth", "enterprise"} <= set(plan_names())
    assert limits_for("free") == PlanLimits(25, 100, 50, 500, 200, 5_000, 7)
    assert limits_for("enterprise") == PlanLimits(5000, 10000, 20000, 20000, 4_000, 60_000, 90)
    assert limits_for("platinum") == limits_for("free")


async def test_burst_is_granted_then_refused(buckets: TokenBuckets) -> None:
    bucket = Bucket(f"{scope()}:tenant", FROZEN, 5)
    first = await buckets.take([bucket], 3)
    assert (first.granted, first.remaining, first.wait) == (3, 2, 0.0)
    second = await buckets.take([bucket], 3)  # only 2 left: a partial grant
    assert (second.granted, second.remaining) == (2, 0)
    refused = await buckets.take([bucket], 1)
    assert (refused.granted, refused.remaining) == (0, 0)
    assert refused.wait > 0


async def test_the_smaller_bucket_limits_and_both_are_debited(buckets: TokenBuckets) -> None:
    tenant = scope()
    wide = Bucket(f"{tenant}:tenant", FROZEN, 10)
    narrow = Bucket(f"{tenant}:provider:sms", 2 * FROZEN, 4)
    grant = await buckets.take([wide, narrow], 6)
    assert (grant.granted, grant.remaining) == (4, 0)
    assert (grant.rate, grant.limit) == (narrow.rate, narrow.burst)  # the narrow one limits
    assert grant.wait == pytest.approx(1 / narrow.rate, rel=0.01)
    # The wide bucket lost the 4 granted, not the 6 asked; the narrow one is empty.
    assert (await buckets.take([wide], 10)).granted == 6
    assert (await buckets.take([narrow], 1)).granted == 0


async def test_a_refused_take_debits_no_bucket(buckets: TokenBuckets) -> None:
    tenant = scope()
    full = Bucket(f"{tenant}:tenant", FROZEN, 3)
    empty = Bucket(f"{tenant}:provider:p", FROZEN, 1)
    assert (await buckets.take([empty], 1)).granted == 1
    refused = await buckets.take([full, empty], 2)
    assert refused.granted == 0 and refused.limit == 1
    assert (await buckets.take([full], 3)).granted == 3


async def test_zero_only_reports(buckets: TokenBuckets) -> None:
    bucket = Bucket(f"{scope()}:tenant", FROZEN, 7)
    for _ in range(3):
        report = await buckets.take([bucket], 0)
        assert (report.granted, report.remaining, report.wait) == (0, 7, 0.0)
        assert (report.rate, report.limit) == (FROZEN, 7)
    assert (await buckets.take([bucket], 7)).granted == 7


async def test_wait_says_when_the_next_token_comes(buckets: TokenBuckets) -> None:
    bucket = Bucket(f"{scope()}:tenant", 2.0, 3)
    emptied = await buckets.take([bucket], 3)
    assert (emptied.granted, emptied.remaining, emptied.rate, emptied.limit) == (3, 0, 2.0, 3)
    # A token every 0.5 s; whatever refilled since the take shortens the wait.
    assert 0 < emptied.wait <= 0.5
    await asyncio.sleep(emptied.wait + 0.05)
    assert (await buckets.take([bucket], 1)).granted == 1


async def test_refill_follows_the_rate_and_keeps_fractions(buckets: TokenBuckets) -> None:
    """Polling at 0.7 token per poll: dropping each take's fraction would yield ~7/s, not 10/s."""
    rate, burst = 10.0, 5
    bucket = Bucket(f"{scope()}:tenant", rate, burst)
    started = time.monotonic()
    total = (await buckets.take([bucket], burst)).granted
    first_done = time.monotonic()
    while time.monotonic() - started < 1.5:
        await asyncio.sleep(0.07)
        last_asked = time.monotonic()
        total += (await buckets.take([bucket], burst)).granted  # all whole tokens there are
    finished = time.monotonic()
    # The server's clock ran at least from the first answer to the last question, at most
    # from the first question to the last answer. Every poll empties the bucket of its
    # whole tokens, and polls come faster than it fills up, so every token refilled in
    # between was taken, less the fraction of one left at the end.
    assert total >= burst + math.floor(rate * (last_asked - first_done)) - 1
    assert total <= burst + rate * (finished - started)


async def test_concurrent_takes_never_exceed_burst_plus_refill(buckets: TokenBuckets) -> None:
    rate, burst = 20.0, 30
    bucket = Bucket(f"{scope()}:tenant", rate, burst)

    async def worker(n: int) -> int:
        taken = 0
        for _ in range(10):
            taken += (await buckets.take([bucket], 1 + n % 3)).granted
        return taken

    started = time.monotonic()
    totals = await asyncio.gather(*(worker(n) for n in range(40)))
    elapsed = time.monotonic() - started
    # 40 workers ask for ~800 tokens: far beyond the burst, so all of it is spent.
    assert sum(totals) >= burst
    assert sum(totals) <= burst + rate * elapsed


async def test_keys_share_the_tenant_hash_tag_and_expire(
    redis: Redis, buckets: TokenBuckets
) -> None:
    tenant = uuid.uuid4()
    limits = limits_for("free")
    sends = tenant_bucket(tenant, "live", limits)
    provider = provider_bucket(tenant, "config-1", 4.0, 8)
    await buckets.take([sends, provider], 2)
    sends_key = f"herald:tb:{{{tenant}}}:tenant:live"
    provider_key = f"herald:tb:{{{tenant}}}:provider:config-1"
    assert await redis.exists(sends_key, provider_key) == 2
    # Each key lives until its bucket would be full again (2 tokens at its rate), plus 1 s.
    assert 0 < await redis.pttl(provider_key) <= 2 / 4.0 * 1000 + 1000
    assert 0 < await redis.pttl(sends_key) <= 2 / limits.send_rate * 1000 + 1000
    short = Bucket(f"{tenant}:apikey:short", 100.0, 1)
    await buckets.take([short], 1)
    await asyncio.sleep(1.2)  # refilled after 10 ms, expired after 1.01 s
    assert not await redis.exists(f"herald:tb:{{{tenant}}}:apikey:short")


async def test_the_script_is_reloaded_after_a_flush(redis: Redis, buckets: TokenBuckets) -> None:
    bucket = api_bucket(scope(), "live", limits_for("free"))
    assert (await buckets.take([bucket], 1)).granted == 1
    await redis.script_flush()
    assert (await buckets.take([bucket], 1)).granted == 1


async def test_buckets_of_one_take_share_a_scope(buckets: TokenBuckets) -> None:
    with pytest.raises(ValueError, match="scope"):
        await buckets.take([Bucket("a:tenant", 1, 1), Bucket("b:tenant", 1, 1)], 1)
    with pytest.raises(ValueError):
        Bucket("no-scope", 1, 1)
    with pytest.raises(ValueError):
        Bucket("a:tenant", 0, 1)


async def test_refused_messages_queue_behind_earlier_ones(buckets: TokenBuckets) -> None:
    bucket = Bucket(f"{scope()}:provider:line", rate=10.0, burst=2)
    first = await buckets.take([bucket], 5)  # 2 now, 3 queue: turns at ~0.1, 0.2, 0.3 s
    assert (first.granted, first.rate) == (2, 10.0)
    assert 0.0 < first.turn <= 0.1 + 1e-6
    second = await buckets.take([bucket], 4)  # none now; the line continues after the 3
    assert second.granted == 0
    # The second caller's first turn comes after the first caller's three, not with them.
    assert second.turn >= first.turn + 3 / 10.0 - 0.05
    assert second.turn <= first.turn + 3 / 10.0 + 1e-6
    everything = await buckets.take([bucket], 2)
    assert everything.turn >= second.turn + 4 / 10.0 - 0.05
    # Granting everything asked leaves the line alone and reports no turn.
    assert (await buckets.take([bucket], 0)).turn == 0.0


async def test_takes_made_together_share_round_trips_and_the_limit(
    redis: Redis, buckets: TokenBuckets
) -> None:
    bucket = Bucket(f"{scope()}:apikey:together", FROZEN, 30)
    other = Bucket(f"{scope()}:apikey:apart", FROZEN, 5)
    calls_before = await _evalsha_calls(redis)
    grants = await asyncio.gather(
        *(buckets.take_together([bucket], 1) for _ in range(50)),
        *(buckets.take_together([other], 1) for _ in range(10)),
    )
    # Each bucket keeps its own limit, and the callers that came first were served first,
    # each told what it left behind, as if they had taken one after the other.
    assert [g.granted for g in grants[:50]] == [1] * 30 + [0] * 20
    assert [g.granted for g in grants[50:]] == [1] * 5 + [0] * 5
    assert [g.remaining for g in grants[:30]] == list(range(29, -1, -1))
    assert all(g.remaining == 0 and g.wait > 0 for g in grants[30:50])
    assert all(g.wait == 0 for g in grants[:29])
    # The callers refused wait in line one token interval after another, in their order.
    turns = [g.turn for g in grants[30:50]]
    assert turns == sorted(turns) and turns[0] > 0
    assert turns[1] - turns[0] == pytest.approx(1 / FROZEN)
    # Sixty takes were sent as one script call per bucket, not one per take.
    assert await _evalsha_calls(redis) - calls_before == 2
    # After a SCRIPT FLUSH the batch loads the script again and still answers everyone.
    await redis.script_flush()
    again = await asyncio.gather(*(buckets.take_together([other], 0) for _ in range(3)))
    assert [g.granted for g in again] == [0, 0, 0]


async def test_a_round_trip_that_hangs_fails_its_takes_after_the_batch_timeout() -> None:
    # A server that accepts connections and never answers: a Redis that hangs.
    server = await asyncio.start_server(lambda reader, writer: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = Redis.from_url(f"redis://127.0.0.1:{port}")
    hanging = TokenBuckets(client, batch_timeout=0.2)
    try:
        async with asyncio.timeout(10):  # the test's own bound, far above the batch's
            takes = await asyncio.gather(
                *(hanging.take_together([Bucket(f"{scope()}:tenant", 1, 1)], 1) for _ in range(3)),
                return_exceptions=True,
            )
        assert all(isinstance(take, TimeoutError) for take in takes), takes
    finally:
        await client.aclose()
        server.close()


async def _evalsha_calls(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def test_a_caller_whose_turn_came_goes_to_the_head_of_the_line(
    buckets: TokenBuckets,
) -> None:
    bucket = Bucket(f"{scope()}:provider:head", rate=10.0, burst=1)
    await buckets.take([bucket], 1)
    queued = await buckets.take([bucket], 10)  # a line of 10, one second long
    assert queued.granted == 0 and queued.turn > 0
    back = await buckets.take([bucket], 2, at_head=True)
    # It waits for the next token, not for the ten ahead of it...
    assert back.granted == 0 and back.turn <= queued.turn + 1e-6
    # ...and whoever comes next queues behind all twelve.
    late = await buckets.take([bucket], 1)
    assert late.turn >= queued.turn + 12 / 10.0 - 0.05


async def test_callers_whose_turn_comes_wait_for_their_tokens_without_joining_the_line(
    buckets: TokenBuckets, redis: Redis
) -> None:
    bucket = Bucket(f"{scope()}:provider:turns", rate=50.0, burst=4)
    await buckets.take([bucket], 4)  # empty
    await buckets.take([bucket], 6)  # a line: what others were told
    line = await redis.hget(bucket.redis_key, "q")
    # Five callers of one process come back for 2 tokens each: they wait in turn, each
    # gets all of its tokens at once, and nobody is sent to the end of the line.
    grants = await asyncio.gather(*(buckets.take_in_turn([bucket], 2, hold=5.0) for _ in range(5)))
    assert [grant.granted for grant in grants] == [2] * 5
    assert all(grant.turn == 0.0 for grant in grants)
    assert await redis.hget(bucket.redis_key, "q") == line
    assert buckets._rooms == {}  # the waiting room is gone with its last caller


async def test_what_a_caller_cannot_get_in_time_goes_to_the_head_of_the_line(
    buckets: TokenBuckets,
) -> None:
    bucket = Bucket(f"{scope()}:provider:hold", rate=FROZEN, burst=4)
    await buckets.take([bucket], 4)  # empty, and it will not refill during the test
    queued = await buckets.take([bucket], 3)
    grant = await buckets.take_in_turn([bucket], 2, hold=0.05)
    assert grant.granted == 0 and 0.0 < grant.turn <= queued.turn + 1e-6


async def test_a_caller_gets_at_most_half_the_burst_at_once_in_its_turn(
    buckets: TokenBuckets,
) -> None:
    bucket = Bucket(f"{scope()}:provider:half", rate=FROZEN, burst=6)
    grant = await buckets.take_in_turn([bucket], 5, hold=1.0)
    # 3 (half the burst) as one piece, then the other 2 at once as at the head of the line,
    # since the bucket still holds them.
    assert grant.granted == 5
    assert (await buckets.take([bucket], 1)).granted == 1  # 6 - 5
