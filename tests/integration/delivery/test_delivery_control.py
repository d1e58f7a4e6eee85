"""What a deliver job decides besides sending: token waits, the retry budget and window,
breaker failover, shutdown and an unreachable Redis. Each case runs the real deliverer of
a worker context against real PostgreSQL and Redis, and local provider servers."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import utcnow
from app.delivery.claims import claim, release, renew
from app.delivery.outcomes import Due, Sent, record
from app.delivery.routing import TURN_LEAD, Router, Send
from app.delivery.service import Deliverer
from app.notifications.dispatch import dispatch
from app.notifications.models import Attempt, Message
from app.providers.base import SendResult
from app.providers.breaker import BreakerPolicy, CircuitBreakers
from app.ratelimit.buckets import TokenBuckets, provider_bucket, tenant_bucket
from app.runtime import ServiceUrls
from app.tenants.plans import limits_for
from tests.fakes import FakeProvider, Mailbox
from tests.send_path import notify, put_recipient, put_template, workers
from tests.support import TenantKey, free_port, settings_for, unmetered_renderer

HOOK = {"webhook": {"body": {"event": "ping", "n": "{{ n }}"}}}
MAIL = {"email": {"subject": "Hi", "text": "Hello"}}


@pytest.fixture
def provider() -> Iterator[FakeProvider]:
    fake = FakeProvider().start()
    fake.answer(204)
    yield fake
    fake.stop()


@pytest.fixture
async def deliverer(service_urls: ServiceUrls, provider: FakeProvider) -> AsyncIterator[Deliverer]:
    settings = settings_for(
        service_urls.database_url,
        service_urls.redis_url,
        HERALD_ALLOW_PRIVATE_URLS="true",
        HERALD_PROVIDER_BASE_URLS=f"sendgrid={provider.url}",
    )
    async with workers(settings) as ctx:
        yield ctx["deliverer"]


async def add_provider(client: httpx.AsyncClient, tenant: TenantKey, **config: Any) -> str:
    response = await client.post("/v1/providers", headers=tenant.headers, json=config)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def queued(
    client: httpx.AsyncClient,
    session: AsyncSession,
    tenant: TenantKey,
    template: str,
    n: int,
    **options: Any,
) -> list[uuid.UUID]:
    """Send one notification to n recipients (`options` added to its body) and dispatch it
    here; its message ids."""
    to = [f"r{i}" for i in range(n)]
    accepted = await notify(client, tenant, template=template, to=to, data={"n": 1}, **options)
    await dispatch(
        session, notification_id=uuid.UUID(accepted["id"]), renderer=unmetered_renderer()
    )
    await session.commit()
    ids = await session.scalars(
        select(Message.id)
        .where(Message.notification_id == uuid.UUID(accepted["id"]))
        .order_by(Message.id)
    )
    return list(ids)


async def states(session: AsyncSession, ids: list[uuid.UUID]) -> list[tuple[str, int, int]]:
    session.expire_all()
    rows = await session.execute(
        select(Message.status, Message.attempts, Message.rate_limited_attempts)
        .where(Message.id.in_(ids))
        .order_by(Message.id)
    )
    return [tuple(row) for row in rows.all()]  # type: ignore[misc]


def webhook_ids(provider: FakeProvider) -> list[str]:
    return [headers["webhook-id"] for _, _, headers, _ in provider.requests]


async def hook_recipients(
    client: httpx.AsyncClient, tenant: TenantKey, provider: FakeProvider, n: int
) -> None:
    await put_template(client, tenant, "hook", HOOK)
    for i in range(n):
        await put_recipient(client, tenant, f"r{i}", webhook_url=f"{provider.url}/hook")


async def webhook_messages(
    client: httpx.AsyncClient,
    session: AsyncSession,
    tenant: TenantKey,
    provider: FakeProvider,
    n: int,
    **limits: int,
) -> list[uuid.UUID]:
    """A webhook config (its `rate_per_second` and `burst` if given), n recipients whose
    endpoint is `provider`, and n queued messages."""
    await add_provider(
        client, tenant, channel="webhook", provider="webhook", name="hooks", **limits
    )
    await hook_recipients(client, tenant, provider, n)
    return await queued(client, session, tenant, "hook", n)


async def mail_with_backup(
    client: httpx.AsyncClient, tenant: TenantKey, smtp_port: int, *, recipients: int
) -> tuple[str, str]:
    """The e-mail configs `primary` (SendGrid: the fake provider) and `backup` (SMTP: the
    mailbox), the `mail` template and recipients r0…; the two config ids."""
    sender = {"from_email": "hi@acme.test"}
    primary = await add_provider(
        client,
        tenant,
        channel="email",
        provider="sendgrid",
        name="primary",
        priority=0,
        credentials={"api_key": "SG.key"},
        options=sender,
    )
    smtp = {**sender, "host": "127.0.0.1", "port": smtp_port, "security": "none"}
    backup = await add_provider(
        client,
        tenant,
        channel="email",
        provider="smtp",
        name="backup",
        priority=1,
        rate_per_second=100,
        burst=100,
        options=smtp,
    )
    await put_template(client, tenant, "mail", MAIL)
    for i in range(recipients):
        await put_recipient(client, tenant, f"r{i}", email=f"r{i}@example.com")
    return primary, backup


async def test_messages_without_tokens_wait_their_turn_without_an_attempt(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    session: AsyncSession,
    provider: FakeProvider,
    deliverer: Deliverer,
) -> None:
    ids = await webhook_messages(client, session, tenant, provider, 8, rate_per_second=4, burst=4)

    due = await deliverer.deliver(ids)

    # The burst, less the 50 ms of the rate kept back for send-time jitter: 4 - 1.
    assert len(provider.requests) == 3
    assert set(webhook_ids(provider)) <= {str(i) for i in ids}
    assert len(due) == 5 and all(d.attempt == 0 for d in due)  # waits, not retries
    times = sorted(d.at for d in due)
    # One token every 1/4 s: each waiting message is due a quarter second after the last,
    # TURN_LEAD before its turn (the first one's turn is TURN_LEAD away: due at once).
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
    assert all(gap == pytest.approx(0.25, abs=0.01) for gap in gaps), gaps
    found = await states(session, ids)
    assert sorted(found).count(("sent", 1, 0)) == 3
    assert sorted(found).count(("queued", 0, 0)) == 5
    # A waiting message is not claimed before its time.
    early = [d.message_id for d in sorted(due, key=lambda d: d.at)[2:]]
    assert await deliverer.deliver(early) == []
    assert len(provider.requests) == 3


async def test_high_priority_takes_its_tokens_before_the_tenants_own_backlog(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    session: AsyncSession,
    provider: FakeProvider,
    deliverer: Deliverer,
) -> None:
    # A backlog of 40 at 4/s: a line about ten seconds long.
    backlog = await webhook_messages(
        client, session, tenant, provider, 40, rate_per_second=4, burst=4
    )
    waiting = await deliverer.deliver(backlog)
    assert len(waiting) == 37
    # Then one more normal message and one high-priority one (a critical category).
    [normal] = await queued(client, session, tenant, "hook", 1)
    [urgent] = await queued(
        client, session, tenant, "hook", 1, category="security", priority="high"
    )
    due = {d.message_id: d for d in await deliverer.deliver([normal, urgent])}
    assert set(due) == {normal, urgent}  # no token left now: both wait, neither is sent
    assert all(d.attempt == 0 for d in due.values())
    # The normal one waits at the end of the line, behind the backlog; the high one at its
    # head, for the next tokens.
    assert due[normal].at >= max(d.at for d in waiting)
    ahead = (due[normal].at - due[urgent].at).total_seconds()
    assert ahead > 37 / 4 - 3, ahead
    # The high one goes at its turn, before the backlog it passed.
    assert due[urgent].at < sorted(d.at for d in waiting)[8]


async def test_rate_limited_answers_do_not_spend_the_attempt_budget(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    session: AsyncSession,
    provider: FakeProvider,
    deliverer: Deliverer,
) -> None:
    await add_provider(client, tenant, channel="webhook", provider="webhook", name="hooks")
    response = await client.put(
        "/v1/tenant/retry-policy", headers=tenant.headers, json={"max_attempts": 1}
    )
    assert response.status_code == 200, response.text
    await hook_recipients(client, tenant, provider, 2)
    [limited, broken] = await queued(client, session, tenant, "hook", 2)

    provider.answer(429, b"", {"Retry-After": "1"})
    [due] = await deliverer.deliver([limited])
    assert due.attempt == 1 and due.at > utcnow() + timedelta(seconds=0.9)
    assert await states(session, [limited]) == [("retrying", 1, 1)]
    await session.execute(update(Message).values(next_attempt_at=utcnow()))
    await session.commit()
    provider.answer(204)
    assert await deliverer.deliver([limited]) == []
    assert await states(session, [limited]) == [("sent", 2, 1)]
    codes = await session.scalars(
        select(Attempt.status_code).where(Attempt.message_id == limited).order_by(Attempt.n)
    )
    assert list(codes) == [429, 204]

    detail = await client.get(f"/v1/messages/{limited}", headers=tenant.headers)
    assert detail.status_code == 200, detail.text
    body = detail.json()
    assert (body["status"], body["attempts"], body["rate_limited_attempts"]) == ("sent", 2, 1)
    assert [
        (a["n"], a["outcome"], a["error_class"], a["status_code"]) for a in body["history"]
    ] == [(1, "failed", "rate_limited", 429), (2, "sent", None, 204)]

    # A server error spends the budget of one attempt: straight to the dead-letter queue.
    provider.answer(500)
    assert await deliverer.deliver([broken]) == []
    assert await states(session, [broken]) == [("failed", 1, 0)]


async def test_no_retry_is_scheduled_past_the_window(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    session: AsyncSession,
    provider: FakeProvider,
    deliverer: Deliverer,
) -> None:
    await add_provider(client, tenant, channel="webhook", provider="webhook", name="hooks")
    await client.put(
        "/v1/tenant/retry-policy",
        headers=tenant.headers,
        json={"max_attempts": 8, "window_hours": 1},
    )
    await hook_recipients(client, tenant, provider, 2)
    [old, fresh] = await queued(client, session, tenant, "hook", 2)
    await session.execute(
        update(Message).where(Message.id == old).values(created_at=utcnow() - timedelta(hours=2))
    )
    await session.commit()
    provider.answer(503)
    due = await deliverer.deliver([old, fresh])
    assert [d.message_id for d in due] == [fresh]
    assert await states(session, [old, fresh]) == [("failed", 1, 0), ("retrying", 1, 0)]


async def test_an_open_breaker_fails_over_then_messages_wait(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    session: AsyncSession,
    provider: FakeProvider,
    mailbox: tuple[Mailbox, int],
    deliverer: Deliverer,
    service_urls: ServiceUrls,
) -> None:
    box, port = mailbox
    primary, backup = await mail_with_backup(client, tenant, port, recipients=4)
    provider.answer(202)
    breakers = deliverer.router.breakers
    await breakers.record(tenant.tenant_id, primary, successes=0, failures=25)

    first = await queued(client, session, tenant, "mail", 2)
    assert await deliverer.deliver(first) == []
    assert provider.requests == [] and len(box.received) == 2
    providers = await session.scalars(select(Message.provider).where(Message.id.in_(first)))
    assert set(providers) == {"smtp"}
    listed = (await client.get("/v1/providers", headers=tenant.headers)).json()["data"]
    assert {p["name"]: p["breaker"]["state"] for p in listed} == {
        "primary": "open",
        "backup": "closed",
    }

    # Both open: nothing is sent, nothing fails; the messages wait for the first probe.
    await breakers.record(tenant.tenant_id, backup, successes=0, failures=25)
    second = await queued(client, session, tenant, "mail", 4)
    second = [i for i in second if i not in first]
    due = await deliverer.deliver(second)
    assert sorted(d.message_id for d in due) == sorted(second)
    assert all(d.attempt == 0 and d.at > utcnow() for d in due)
    assert set(await states(session, second)) == {("queued", 0, 0)}
    assert provider.requests == [] and len(box.received) == 2


async def test_shutdown_gives_unsent_messages_back(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    session: AsyncSession,
    provider: FakeProvider,
    deliverer: Deliverer,
) -> None:
    ids = await webhook_messages(client, session, tenant, provider, 3)
    deliverer.stopping.set()
    due: list[Due] = await deliverer.deliver(ids)
    assert provider.requests == []
    assert sorted(d.message_id for d in due) == ids
    assert set(await states(session, ids)) == {("queued", 0, 0)}


async def test_without_redis_for_routing_messages_wait(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    session: AsyncSession,
    provider: FakeProvider,
    deliverer: Deliverer,
) -> None:
    ids = await webhook_messages(client, session, tenant, provider, 2)
    dead = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    deliverer.router = Router(buckets=TokenBuckets(dead), breakers=CircuitBreakers(dead))
    try:
        due = await deliverer.deliver(ids)
    finally:
        await dead.aclose()
    assert provider.requests == []
    assert sorted(d.message_id for d in due) == ids
    assert set(await states(session, ids)) == {("queued", 0, 0)}


async def test_a_message_of_another_tenant_is_not_found(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    other_tenant: TenantKey,
    session: AsyncSession,
    provider: FakeProvider,
) -> None:
    [message_id] = await webhook_messages(client, session, tenant, provider, 1)
    mine = await client.get(f"/v1/messages/{message_id}", headers=tenant.headers)
    assert mine.status_code == 200 and mine.json()["history"] == []
    theirs = await client.get(f"/v1/messages/{message_id}", headers=other_tenant.headers)
    assert theirs.status_code == 404
    assert theirs.json()["type"].endswith("/not_found")


async def test_a_worker_that_lost_its_claim_cannot_overwrite_the_new_holder(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    session: AsyncSession,
    provider: FakeProvider,
) -> None:
    """A worker outliving its lease (a slow provider, a stalled write) finds the message
    handed to another worker: its late outcome and its give-back must change nothing."""
    first, second = await webhook_messages(client, session, tenant, provider, 2)
    [stale] = await claim(session, [first], lease=timedelta(milliseconds=1))
    [stale_too] = await claim(session, [second], lease=timedelta(milliseconds=1))
    await session.commit()
    await asyncio.sleep(0.01)
    # The sweeper took both back after their leases ran out; other workers claim them.
    await session.execute(
        update(Message)
        .where(Message.id.in_([first, second]))
        .values(status="retrying", claimed_until=None, next_attempt_at=None)
    )
    [holder] = await claim(session, [first])
    [holder_too] = await claim(session, [second])
    await session.commit()

    late = SendResult(ok=False, error_class="permanent", error="HTTP 400", status_code=400)
    retries = await record(session, [Sent(Send(stale, None), "webhook", late, 5)], utcnow())
    await release(session, [(stale_too, utcnow())])
    await session.commit()
    assert retries == []
    assert await states(session, [first, second]) == [("sending", 2, 0), ("sending", 2, 0)]

    ok = SendResult(ok=True, provider_message_id="p-1")
    await record(session, [Sent(Send(holder, None), "webhook", ok, 5)], utcnow())
    await release(session, [(holder_too, utcnow())])
    await session.commit()
    assert await states(session, [first, second]) == [("sent", 2, 0), ("retrying", 1, 0)]
    # Both attempts happened, and both are on the record.
    outcomes = await session.scalars(
        select(Attempt.outcome).where(Attempt.message_id == first).order_by(Attempt.id)
    )
    assert list(outcomes) == ["failed", "sent"]


async def test_a_renewed_claim_outlives_its_first_lease_and_its_outcome_is_written(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    session: AsyncSession,
    provider: FakeProvider,
) -> None:
    """The holder of a batch renews its claims while it runs: the lease moves on (the
    sweeper takes back only claims past it), and the outcome written with the renewed token
    counts. A claim the sweeper took back is not renewed."""
    kept, lost = await webhook_messages(client, session, tenant, provider, 2)
    [holder] = await claim(session, [kept], lease=timedelta(seconds=1))
    [stale] = await claim(session, [lost], lease=timedelta(seconds=1))
    await session.commit()
    first_token = holder.claimed_until
    # The sweeper took `lost` back (its worker stopped renewing); another worker holds it.
    await session.execute(
        update(Message)
        .where(Message.id == lost)
        .values(status="retrying", claimed_until=None, next_attempt_at=None)
    )
    [other] = await claim(session, [lost])
    await session.commit()

    assert await renew(session, [holder, stale], lease=timedelta(minutes=5)) == 1
    await session.commit()
    assert holder.claimed_until > first_token + timedelta(minutes=4)
    session.expire_all()
    leases = dict(
        (
            await session.execute(
                select(Message.id, Message.claimed_until).where(Message.id.in_([kept, lost]))
            )
        )
        .tuples()
        .all()
    )
    # The row's lease is the renewed one (the sweeper takes back only what is past it);
    # the other worker's claim is untouched.
    assert leases == {kept: holder.claimed_until, lost: other.claimed_until}
    assert stale.claimed_until != other.claimed_until
    ok = SendResult(ok=True, provider_message_id="p-1")
    await record(session, [Sent(Send(holder, None), "webhook", ok, 5)], utcnow())
    await session.commit()
    assert (await states(session, [kept]))[0][0] == "sent"


async def test_a_replay_gets_a_whole_retry_budget_and_window(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    session: AsyncSession,
    provider: FakeProvider,
    deliverer: Deliverer,
) -> None:
    await add_provider(client, tenant, channel="webhook", provider="webhook", name="hooks")
    policy = {"max_attempts": 2, "window_hours": 1}
    assert (
        await client.put("/v1/tenant/retry-policy", headers=tenant.headers, json=policy)
    ).status_code == 200
    await hook_recipients(client, tenant, provider, 1)
    [message_id] = await queued(client, session, tenant, "hook", 1)

    async def attempt(status: int) -> None:
        await session.execute(update(Message).values(next_attempt_at=utcnow()))
        await session.commit()
        provider.answer(status, b"", {"Retry-After": "1"})
        await deliverer.deliver([message_id])

    for status in (429, 503, 503):  # a 429 costs no attempt: the second 503 spends the last
        await attempt(status)
    assert await states(session, [message_id]) == [("failed", 3, 1)]
    # Two hours later: the message's own window is long gone.
    await session.execute(update(Message).values(created_at=utcnow() - timedelta(hours=2)))
    await session.commit()

    replayed = await client.post(
        "/v1/dlq/replay", headers=tenant.headers, json={"ids": [str(message_id)]}
    )
    assert replayed.status_code == 200, replayed.text
    await attempt(503)  # within the replay's budget and window: retried, not failed
    assert await states(session, [message_id]) == [("retrying", 1, 0)]
    await attempt(503)
    assert await states(session, [message_id]) == [("failed", 2, 0)]


async def test_refused_credentials_retry_and_fail_over(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    session: AsyncSession,
    provider: FakeProvider,
    mailbox: tuple[Mailbox, int],
    deliverer: Deliverer,
) -> None:
    """A provider refusing our key is our configuration's fault, not the messages': they
    retry, the breaker counts the refusals, opens, and the channel's next provider sends."""
    box, port = mailbox
    await mail_with_backup(client, tenant, port, recipients=20)
    provider.answer(401, {"errors": [{"message": "The provided authorization grant is invalid"}]})
    ids = await queued(client, session, tenant, "mail", 20)

    due = await deliverer.deliver(ids)
    assert len(provider.requests) == 20 and box.received == []
    assert sorted(d.message_id for d in due) == ids and all(d.attempt == 1 for d in due)
    assert set(await states(session, ids)) == {("retrying", 1, 0)}
    listed = (await client.get("/v1/providers", headers=tenant.headers)).json()["data"]
    assert {p["name"]: p["breaker"]["state"] for p in listed}["primary"] == "open"

    await session.execute(update(Message).values(next_attempt_at=utcnow()))
    await session.commit()
    assert await deliverer.deliver(ids) == []
    assert len(provider.requests) == 20 and len(box.received) == 20
    assert set(await states(session, ids)) == {("sent", 2, 0)}


async def test_answers_that_say_nothing_of_the_provider_leave_its_breaker_alone(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    session: AsyncSession,
    provider: FakeProvider,
    deliverer: Deliverer,
) -> None:
    """Rate limiting and refused addresses are neither successes nor failures; a probe that
    ends so hands its permit back for the next caller."""
    # Tokens aplenty at first: only the breaker decides.
    config = await add_provider(
        client,
        tenant,
        channel="webhook",
        provider="webhook",
        name="h",
        rate_per_second=1000,
        burst=1000,
    )
    await hook_recipients(client, tenant, provider, 22)
    ids = await queued(client, session, tenant, "hook", 22)
    quick = CircuitBreakers(
        deliverer.router.breakers.redis, BreakerPolicy(cool_down=0.05, probe_timeout=60)
    )
    deliverer.router = Router(buckets=deliverer.router.buckets, breakers=quick)

    provider.answer(400)  # permanent: the address, not the provider
    assert await deliverer.deliver(ids[:10]) == []
    provider.answer(429, b"", {"Retry-After": "1"})
    assert len(await deliverer.deliver(ids[10:20])) == 10
    assert (await quick.states(tenant.tenant_id, [config]))[config].calls == 0

    await quick.record(tenant.tenant_id, config, successes=0, failures=25)
    await asyncio.sleep(0.1)  # cooled down: the next caller gets the probe
    [due] = await deliverer.deliver([ids[20]])
    assert due.attempt == 1  # the probe was made, and rate limited
    admission = await quick.admit(tenant.tenant_id, config, 1)
    assert (admission.allowed, admission.probe) == (1, True)  # not held until probe_timeout

    # A probe that finds no token is not made, and hands its permit back as well.
    await quick.record(tenant.tenant_id, config, successes=0, failures=1, probe=True)
    await asyncio.sleep(0.1)
    # A token a second, and none left now.
    slow = {"rate_per_second": 1, "burst": 1}
    assert (
        await client.put(f"/v1/providers/{config}", headers=tenant.headers, json=slow)
    ).status_code == 200
    bucket = provider_bucket(tenant.tenant_id, config, 1, 10_000)
    held = await deliverer.router.buckets.take([bucket], 0)
    await deliverer.router.buckets.take([bucket], held.remaining)
    [due] = await deliverer.deliver([ids[21]])
    assert due.attempt == 0
    admission = await quick.admit(tenant.tenant_id, config, 1)
    assert (admission.allowed, admission.probe) == (1, True)


async def test_the_tenants_plan_paces_its_sends(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    session: AsyncSession,
    provider: FakeProvider,
    deliverer: Deliverer,
) -> None:
    ids = await webhook_messages(client, session, tenant, provider, 30, rate_per_second=1000)
    limits = limits_for("free")
    started = asyncio.get_running_loop().time()
    # Another worker spent the tenant's whole burst a moment ago.
    bucket = tenant_bucket(tenant.tenant_id, tenant.mode, limits)
    assert (await deliverer.router.buckets.take([bucket], limits.send_burst)).granted == 500

    before = utcnow()
    due = await deliverer.deliver(ids)
    # Only what the plan's rate refilled meanwhile went out; the rest wait their turns.
    refilled = (asyncio.get_running_loop().time() - started) * limits.send_rate
    assert len(provider.requests) <= refilled + 1
    assert len(due) == 30 - len(provider.requests) and all(d.attempt == 0 for d in due)
    # They come back as the plan's rate refills a token for each of them (a little before
    # their turn, TURN_LEAD at most, to wait for it in the worker; never before now).
    waits = [(d.at - before).total_seconds() for d in due]
    assert all(0 <= wait <= 30 / limits.send_rate + 0.1 for wait in waits), waits
    assert max(waits) >= (len(due) - 1) / limits.send_rate - TURN_LEAD - 0.1


async def test_a_dead_address_is_suppressed_with_the_providers_reason(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    session: AsyncSession,
    provider: FakeProvider,
    deliverer: Deliverer,
) -> None:
    [message_id] = await webhook_messages(client, session, tenant, provider, 1)
    provider.answer(410)
    assert await deliverer.deliver([message_id]) == []
    listed = (await client.get("/v1/suppressions", headers=tenant.headers)).json()["data"]
    assert [(s["channel"], s["address"], s["reason"]) for s in listed] == [
        ("webhook", f"{provider.url}/hook", "invalid_address")
    ]


async def test_a_channel_without_any_provider_fails_at_once(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    session: AsyncSession,
    deliverer: Deliverer,
) -> None:
    """No config to fail over to: retrying cannot help, unlike a config's refused key."""
    await put_template(client, tenant, "mail", MAIL)
    await put_recipient(client, tenant, "r0", email="r0@example.com")
    ids = await queued(client, session, tenant, "mail", 1)
    assert ids, "dispatch wrote the e-mail message"
    assert await deliverer.deliver(ids) == []
    session.expire_all()
    [message] = await session.scalars(select(Message).where(Message.id.in_(ids)))
    assert (message.status, message.provider, message.error_class) == ("failed", "none", "config")
