"""Circuit breakers on a real Redis: tripping, cool-down, the single probe, isolation.

Short policies (tenths of a second) let the tests wait out windows and cool-downs with
asyncio.sleep; nothing asserts how long anything took. Several CircuitBreakers on separate
Redis clients stand in for worker processes: only the server decides who gets the probe.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import timedelta

import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from app.db import utcnow
from app.providers.breaker import (
    Admission,
    BreakerPolicy,
    CircuitBreakers,
    breaker_key,
    route_key_for,
)
from app.runtime import ServiceUrls

# Short enough to wait out; the probe timeout stays long so that a slow machine does not
# see a probe permit expire in the middle of a race for it.
FAST = BreakerPolicy(window=0.3, cool_down=0.3, probe_timeout=30)
ROUTE = str(uuid.uuid4())


@pytest.fixture
async def redis(service_urls: ServiceUrls) -> AsyncIterator[Redis]:
    client = Redis.from_url(service_urls.redis_url)
    yield client
    await client.aclose()


Workers = Callable[[BreakerPolicy], list[CircuitBreakers]]


@pytest.fixture
async def processes(service_urls: ServiceUrls) -> AsyncIterator[Workers]:
    """Four 'worker processes' under a policy: breakers, each on a Redis client of its own."""
    clients = [Redis.from_url(service_urls.redis_url) for _ in range(4)]

    def under(policy: BreakerPolicy) -> list[CircuitBreakers]:
        return [CircuitBreakers(client, policy) for client in clients]

    yield under
    for client in clients:
        await client.aclose()


@pytest.fixture
def workers(processes: Workers) -> list[CircuitBreakers]:
    return processes(FAST)


def transitions(to: str) -> float:
    return REGISTRY.get_sample_value("herald_breaker_transitions_total", {"to": to}) or 0.0


async def trip(breakers: CircuitBreakers, tenant_id: uuid.UUID, route: str = ROUTE) -> None:
    state = await breakers.record(tenant_id, route, successes=0, failures=breakers.policy.min_calls)
    assert state.state == "open"


async def race_for_probe(
    workers: list[CircuitBreakers], tenant_id: uuid.UUID, callers: int = 20
) -> list[Admission]:
    return await asyncio.gather(
        *(workers[i % len(workers)].admit(tenant_id, ROUTE, 1) for i in range(callers))
    )


async def test_stays_closed_below_min_calls_and_at_exactly_the_ratio(redis: Redis) -> None:
    breakers = CircuitBreakers(redis)
    tenant = uuid.uuid4()

    state = await breakers.record(tenant, "few", successes=0, failures=19)
    assert (state.state, state.calls, state.failures) == ("closed", 19, 19)
    assert state.opened_at is None and state.retry_at is None
    assert await breakers.admit(tenant, "few", 5) == Admission(5, False, None)

    # 1 failure in 20 is 5 %: not above it.
    state = await breakers.record(tenant, "ratio", successes=19, failures=1)
    assert (state.state, state.calls, state.failures) == ("closed", 20, 1)


async def test_opens_above_the_ratio_of_enough_calls(redis: Redis) -> None:
    breakers = CircuitBreakers(redis)
    tenant = uuid.uuid4()
    opened_before = transitions("open")

    assert (await breakers.record(tenant, ROUTE, successes=18, failures=1)).state == "closed"
    state = await breakers.record(tenant, ROUTE, successes=0, failures=1)  # 2 of 20: 10 %

    assert (state.state, state.calls, state.failures) == ("open", 20, 2)
    assert state.opened_at is not None and state.retry_at is not None
    assert state.retry_at - state.opened_at == timedelta(seconds=30)
    assert transitions("open") == opened_before + 1

    admission = await breakers.admit(tenant, ROUTE, 10)
    assert admission == Admission(0, False, state.retry_at)
    assert (await breakers.states(tenant, [ROUTE]))[ROUTE] == state


async def test_outcomes_leave_the_window(redis: Redis) -> None:
    breakers = CircuitBreakers(redis, FAST)
    tenant = uuid.uuid4()
    await breakers.record(tenant, ROUTE, successes=0, failures=19)
    await asyncio.sleep(FAST.window + 0.1)

    state = await breakers.record(tenant, ROUTE, successes=0, failures=1)
    assert (state.state, state.calls, state.failures) == ("closed", 1, 1)


async def test_results_of_calls_sent_before_it_opened_do_not_close_it(redis: Redis) -> None:
    breakers = CircuitBreakers(redis)
    tenant = uuid.uuid4()
    await trip(breakers, tenant)

    state = await breakers.record(tenant, ROUTE, successes=100, failures=0)
    assert state.state == "open"
    assert (await breakers.admit(tenant, ROUTE, 1)).allowed == 0


async def test_after_cool_down_exactly_one_of_many_callers_gets_the_probe(
    workers: list[CircuitBreakers],
) -> None:
    tenant = uuid.uuid4()
    await trip(workers[0], tenant)
    half_open_before = transitions("half_open")

    await asyncio.sleep(FAST.cool_down + 0.1)
    admissions = await race_for_probe(workers, tenant)

    probes = [a for a in admissions if a.allowed]
    assert len(probes) == 1 and probes[0].probe
    assert transitions("half_open") == half_open_before + 1
    refused = [a for a in admissions if not a.allowed]
    assert len(refused) == 19 and not any(a.probe for a in refused)
    state = (await workers[1].states(tenant, [ROUTE]))[ROUTE]
    assert state.state == "half_open"
    # The others are told to come back when the probe permit expires.
    assert {a.retry_at for a in refused} == {state.retry_at}


async def test_probe_asking_for_a_batch_gets_one_call(workers: list[CircuitBreakers]) -> None:
    tenant = uuid.uuid4()
    await trip(workers[0], tenant)
    await asyncio.sleep(FAST.cool_down + 0.1)

    admission = await workers[0].admit(tenant, ROUTE, 50)
    assert admission.allowed == 1 and admission.probe and admission.retry_at is not None


async def test_probe_success_closes_and_resets_counts(processes: Workers) -> None:
    policy = BreakerPolicy(cool_down=0.3)  # the failures that opened it are still in the window
    workers = processes(policy)
    tenant = uuid.uuid4()
    await trip(workers[0], tenant)
    await asyncio.sleep(policy.cool_down + 0.1)
    assert (await workers[0].states(tenant, [ROUTE]))[ROUTE].calls == policy.min_calls
    assert (await workers[0].admit(tenant, ROUTE, 1)).probe
    closed_before = transitions("closed")

    state = await workers[1].record(tenant, ROUTE, successes=1, failures=0, probe=True)

    assert (state.state, state.calls, state.failures) == ("closed", 0, 0)
    assert state.opened_at is None and state.retry_at is None
    assert transitions("closed") == closed_before + 1
    assert await workers[2].admit(tenant, ROUTE, 7) == Admission(7, False, None)


async def test_probe_failure_reopens_for_another_cool_down(processes: Workers) -> None:
    policy = BreakerPolicy(cool_down=1.0)  # long enough to be still open when asked below
    workers = processes(policy)
    tenant = uuid.uuid4()
    await trip(workers[0], tenant)
    first = (await workers[0].states(tenant, [ROUTE]))[ROUTE]
    await asyncio.sleep(policy.cool_down + 0.1)
    assert (await workers[0].admit(tenant, ROUTE, 1)).probe

    state = await workers[1].record(tenant, ROUTE, successes=0, failures=1, probe=True)

    assert state.state == "open"
    assert state.opened_at is not None and first.opened_at is not None
    assert state.opened_at > first.opened_at
    assert state.retry_at == state.opened_at + timedelta(seconds=policy.cool_down)
    assert (await workers[2].admit(tenant, ROUTE, 1)) == Admission(0, False, state.retry_at)

    await asyncio.sleep(policy.cool_down + 0.1)
    assert len([a for a in await race_for_probe(workers, tenant) if a.allowed]) == 1


async def test_the_probe_that_closes_it_releases_the_messages_held_for_it(
    processes: Workers,
) -> None:
    workers = processes(FAST)
    tenant = uuid.uuid4()
    await trip(workers[0], tenant)
    await asyncio.sleep(FAST.cool_down + 0.1)
    probe = await workers[0].admit(tenant, ROUTE, 5)
    assert probe.probe and probe.retry_at is not None
    # The four others wait for the probe's verdict, noted by two workers; one noted with a
    # time already past went its way and is not released.
    held = [(uuid.uuid4(), probe.retry_at) for _ in range(4)]
    await workers[1].hold(tenant, ROUTE, held[:2])
    await workers[2].hold(tenant, ROUTE, held[2:])
    await workers[2].hold(tenant, ROUTE, [(uuid.uuid4(), utcnow() - timedelta(seconds=1))])

    failed = await workers[3].record(tenant, ROUTE, successes=0, failures=1, probe=True)
    assert failed.state == "open" and failed.released == ()  # they wait on
    await asyncio.sleep(FAST.cool_down + 0.1)
    assert (await workers[0].admit(tenant, ROUTE, 1)).probe
    closed = await workers[3].record(tenant, ROUTE, successes=1, failures=0, probe=True)

    assert closed.state == "closed"
    assert sorted(closed.released) == sorted(held)  # exact to the microsecond
    again = await workers[3].record(tenant, ROUTE, successes=1, failures=0)
    assert again.released == ()  # released once


async def test_an_unanswered_probe_expires_and_another_is_allowed(processes: Workers) -> None:
    policy = BreakerPolicy(cool_down=0.3, probe_timeout=1.0)
    workers = processes(policy)
    tenant = uuid.uuid4()
    await trip(workers[0], tenant)
    await asyncio.sleep(policy.cool_down + 0.1)
    assert (await workers[0].admit(tenant, ROUTE, 1)).probe  # ...and that worker dies
    assert (await workers[1].admit(tenant, ROUTE, 1)).allowed == 0
    half_open_before = transitions("half_open")

    await asyncio.sleep(policy.probe_timeout + 0.1)
    admissions = await race_for_probe(workers, tenant)

    assert [a.probe for a in admissions if a.allowed] == [True]
    assert transitions("half_open") == half_open_before  # still the same half-open spell


async def test_a_probe_without_a_verdict_hands_its_permit_back(redis: Redis) -> None:
    breakers = CircuitBreakers(redis, BreakerPolicy(cool_down=0.3, probe_timeout=60))
    tenant = uuid.uuid4()
    await trip(breakers, tenant)
    await asyncio.sleep(0.4)
    assert (await breakers.admit(tenant, ROUTE, 1)).probe

    # The probe message was rate limited, say: it tells nothing about the provider.
    state = await breakers.record(tenant, ROUTE, successes=0, failures=0, probe=True)
    assert state.state == "half_open"
    assert (await breakers.admit(tenant, ROUTE, 1)).probe


async def test_tenants_and_routes_are_independent(redis: Redis) -> None:
    breakers = CircuitBreakers(redis)
    tenant, other = uuid.uuid4(), uuid.uuid4()
    await trip(breakers, tenant)

    assert (await breakers.admit(other, ROUTE, 3)).allowed == 3
    assert (await breakers.admit(tenant, "another-route", 3)).allowed == 3
    states = await breakers.states(tenant, [ROUTE, "another-route", ROUTE])
    assert set(states) == {ROUTE, "another-route"}
    assert states[ROUTE].state == "open" and states["another-route"].state == "closed"
    assert (await breakers.states(other, [ROUTE]))[ROUTE].state == "closed"
    assert await breakers.states(tenant, []) == {}


async def test_reset_closes_by_hand(redis: Redis) -> None:
    breakers = CircuitBreakers(redis)
    tenant = uuid.uuid4()
    await trip(breakers, tenant)
    closed_before = transitions("closed")

    await breakers.reset(tenant, ROUTE)

    state = (await breakers.states(tenant, [ROUTE]))[ROUTE]
    assert (state.state, state.calls, state.failures) == ("closed", 0, 0)
    assert transitions("closed") == closed_before + 1
    await breakers.reset(tenant, ROUTE)  # a closed breaker: nothing happens
    assert transitions("closed") == closed_before + 1


async def test_reset_by_hand_releases_the_messages_held_for_it(redis: Redis) -> None:
    breakers = CircuitBreakers(redis)
    tenant = uuid.uuid4()
    await trip(breakers, tenant)
    later = utcnow() + timedelta(seconds=30)
    held = [(uuid.uuid4(), later) for _ in range(3)]
    await breakers.hold(tenant, ROUTE, held)
    await breakers.hold(tenant, ROUTE, [(uuid.uuid4(), utcnow() - timedelta(seconds=1))])

    assert sorted(await breakers.reset(tenant, ROUTE)) == sorted(held)  # exact to the µs
    assert await breakers.reset(tenant, ROUTE) == ()  # released once


async def test_state_is_one_hash_tagged_key_that_expires(redis: Redis) -> None:
    breakers = CircuitBreakers(redis)
    tenant = uuid.uuid4()
    route = route_key_for(None, "sms")
    assert route == "sandbox:sms"
    assert breaker_key(tenant, route) == f"herald:cb:{{{tenant}}}:sandbox:sms"

    await breakers.record(tenant, route, successes=3, failures=0)
    assert await redis.keys(f"herald:cb:{{{tenant}}}:*") == [breaker_key(tenant, route).encode()]
    assert 0 < await redis.pttl(breaker_key(tenant, route)) <= 30_000  # closed: the window

    await trip(breakers, tenant, route)
    assert await redis.pttl(breaker_key(tenant, route)) > 86_400_000  # open: kept a day and more


async def test_bad_arguments_are_refused(redis: Redis) -> None:
    breakers = CircuitBreakers(redis)
    tenant = uuid.uuid4()
    assert await breakers.admit(tenant, ROUTE, 0) == Admission(0, False, None)
    with pytest.raises(ValueError):
        await breakers.admit(tenant, ROUTE, -1)
    with pytest.raises(ValueError):
        await breakers.record(tenant, ROUTE, successes=-1, failures=0)
    for bad in ({"min_calls": 0}, {"failure_ratio": 1.0}, {"window": 0}, {"cool_down": -1}):
        with pytest.raises(ValueError):
            BreakerPolicy(**bad)  # type: ignore[arg-type]
