"""What a crash sends again, and what a closing breaker holds back: both counted.

- A `herald worker` SIGKILLed in the middle of a batch of webhook messages: the receiver
  answers the first ones at once and holds the next ones open, so at the kill a known number
  of sends are answered and a known number (the batch's send concurrency) are in flight.
  Outcomes are written as sends finish, so once the answered ones are recorded and the
  worker is killed, only the sends in flight go again after the sweeper takes the dead
  worker's claims back: the receiver keeps no more duplicates than were in flight.
- A breaker half-open after its cool-down: a batch's first message is the probe and the
  rest wait for its verdict. The probe succeeds and closes the breaker, which releases them:
  every message arrives before the probe's permit would have expired (the time they used to
  wait), not after.
"""

from __future__ import annotations

import time
import uuid

from redis.asyncio import Redis

from app.delivery.service import SEND_CONCURRENCY
from app.providers.breaker import BreakerPolicy, CircuitBreakers, breaker_key, route_key_for
from jobs import cron
from tests.faults.harness import (
    Answer,
    Receiver,
    Stack,
    Timeline,
    assert_one_id_per_recipient,
    check_ledger,
    wait_until,
)
from tests.send_path import notify
from tests.support import TenantKey

BATCH = 96  # one deliver job, within the webhook provider's burst (no message waits for tokens)
ANSWERED = 60  # the receiver answers these at once; it holds the next ones open
HELD_OPEN = 20.0  # seconds: longer than the test takes to kill the worker


async def test_a_killed_worker_sends_again_only_what_was_in_flight(stack: Stack) -> None:
    clock = Timeline()
    receiver = Receiver()
    arrived = 0

    def script(_id: str, _to: str, n: int) -> Answer:
        nonlocal arrived  # called under the receiver's lock
        arrived += 1
        if n == 1 and ANSWERED < arrived <= ANSWERED + SEND_CONCURRENCY:
            return Answer(delay=HELD_OPEN)  # kept, answered only after the worker is gone
        return Answer(delay=0.05)

    receiver.script = script
    recipients = [f"r{n}" for n in range(BATCH)]
    tenant = await stack.webhook_tenant(receiver, recipients)
    try:
        with stack.worker("killed") as first:
            accepted = await notify(stack.api, tenant, template="fault", to=recipients)
            # Every send slot busy with a held-open request, the answered ones written.
            await wait_until(
                lambda: len(receiver.arrivals) >= ANSWERED + SEND_CONCURRENCY,
                within=30,
                what="the receiver holding a full batch of requests open",
            )
            await wait_until(
                lambda: _sent(stack, tenant, ANSWERED),
                within=10,
                what="the answered sends recorded while the batch runs",
            )
            first.kill()
        clock.mark("the worker killed mid-batch")
        at_kill = receiver.kept()
        rows = await stack.messages(tenant, accepted["id"])
        recorded = {str(row.id) for row in rows if row.status == "sent"}
        in_flight = set(at_kill) - recorded
        assert len(recorded) == ANSWERED and len(in_flight) == SEND_CONCURRENCY
        assert sum(1 for row in rows if row.status == "sending") == BATCH - ANSWERED

        assert await stack.expire_claims() == BATCH - ANSWERED
        async with stack.worker_ctx() as ctx:
            assert (await cron.sweep(ctx))["expired_claim"] == BATCH - ANSWERED
        with stack.worker("fresh") as fresh:
            await wait_until(
                lambda: stack.settled(tenant, BATCH), within=45, what="every message final"
            )
            assert await fresh.stop() == 0
        clock.mark("every message final")

        rows = await stack.messages(tenant, accepted["id"])
        assert {row.status for row in rows} == {"sent"}
        kept = receiver.kept()
        duplicates = check_ledger(rows, kept, in_flight=SEND_CONCURRENCY)
        # Exactly the sends in flight went twice; what was recorded before the kill, once.
        assert {message_id for message_id, n in kept.items() if n > 1} == in_flight
        assert duplicates == len(in_flight)
        assert all(kept[message_id] == 1 for message_id in recorded)
        assert_one_id_per_recipient([(a.message_id, a.recipient) for a in receiver.arrivals])
        for row in rows:
            attempts = [(a.n, a.outcome) for a in await stack.attempts(uuid.UUID(str(row.id)))]
            if str(row.id) in recorded:
                assert attempts == [(1, "sent")]
            else:
                assert attempts == [(1, "lost"), (2, "sent")]
    finally:
        receiver.close()


HELD = 40  # messages of one batch behind a half-open breaker: one probe, the rest wait


async def test_a_breaker_closed_by_its_probe_releases_the_messages_it_held(stack: Stack) -> None:
    receiver = Receiver()
    recipients = [f"h{n}" for n in range(HELD)]
    tenant = await stack.webhook_tenant(receiver, recipients)
    listed = await stack.api.get("/v1/providers", headers=tenant.headers)
    [config] = listed.json()["data"]
    route = route_key_for(uuid.UUID(config["id"]), "webhook")
    policy = BreakerPolicy()
    redis = Redis.from_url(stack.redis_url)
    try:
        # Failures enough to open the breaker, then its cool-down run out (not waited for).
        breakers = CircuitBreakers(redis, policy)
        opened = await breakers.record(
            tenant.tenant_id, route, successes=0, failures=policy.min_calls
        )
        assert opened.state == "open"
        await redis.hset(
            breaker_key(tenant.tenant_id, route), "retry_at", int(time.time() * 1000) - 1
        )

        with stack.worker("probed"):
            asked = time.time()
            accepted = await notify(stack.api, tenant, template="fault", to=recipients)
            # The probe's permit is handed out after `asked`: it expires no earlier than this.
            permit_expiry = asked + policy.probe_timeout
            await wait_until(
                lambda: stack.settled(tenant, HELD, notification_id=accepted["id"]),
                within=policy.probe_timeout + 30,
                what="every held message final",
            )
        states = await breakers.states(tenant.tenant_id, [route])
        assert states[route].state == "closed"
        rows = await stack.messages(tenant, accepted["id"])
        assert {row.status for row in rows} == {"sent"}
        assert check_ledger(rows, receiver.kept(), in_flight=0) == 0
        # Released when the probe closed the breaker, not when its permit would have expired.
        last = max(a.at for a in receiver.arrivals) - asked
        print(f"the held messages all arrived {last:.1f} s after the notification")
        late = [a for a in receiver.arrivals if a.at >= permit_expiry]
        assert not late, f"{len(late)} of {HELD} messages waited out the probe's permit"
        assert len(receiver.arrivals) == HELD
    finally:
        await redis.aclose()
        receiver.close()


async def _sent(stack: Stack, tenant: TenantKey, count: int) -> bool:
    rows = await stack.messages(tenant)
    return sum(1 for row in rows if row.status == "sent") == count
