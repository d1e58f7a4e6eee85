"""Breakers through /v1/providers: shown on reads, reset by hand, isolated per tenant.

The breaker is driven open with `CircuitBreakers.record` on the same Redis the app uses, as
a delivery worker would, and then read back through the API.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.models import AuditEntry
from app.db import utcnow
from app.notifications.dispatch import dispatch
from app.notifications.models import Message
from app.providers.breaker import CircuitBreakers
from app.runtime import ServiceUrls
from tests.integration.providers.test_provider_configs import create
from tests.queue_traffic import queued_jobs
from tests.send_path import notify, put_recipient, put_template
from tests.support import (
    TenantKey,
    assert_problem,
    make_tenant,
    ready_client,
    settings_for,
    unmetered_renderer,
)

CLOSED = {"state": "closed", "calls": 0, "failures": 0, "opened_at": None, "retry_at": None}


@pytest.fixture
async def breakers(service_urls: ServiceUrls) -> AsyncIterator[CircuitBreakers]:
    """Breakers under the app's (default) policy, on the app's Redis."""
    client = Redis.from_url(service_urls.redis_url)
    yield CircuitBreakers(client)
    await client.aclose()


async def trip(breakers: CircuitBreakers, owner: TenantKey, config_id: str) -> None:
    state = await breakers.record(owner.tenant_id, config_id, successes=0, failures=20)
    assert state.state == "open"


async def test_reads_show_each_configs_breaker(
    client: httpx.AsyncClient, tenant: TenantKey, breakers: CircuitBreakers
) -> None:
    failing = await create(client, tenant, name="Failing")
    healthy = await create(client, tenant, name="Healthy")
    assert failing["breaker"] == CLOSED  # every answer about a config carries it
    got = (await client.get(f"/v1/providers/{failing['id']}", headers=tenant.headers)).json()
    assert got["breaker"] == CLOSED

    await trip(breakers, tenant, failing["id"])
    await breakers.record(tenant.tenant_id, healthy["id"], successes=4, failures=1)

    got = (await client.get(f"/v1/providers/{failing['id']}", headers=tenant.headers)).json()
    breaker = got["breaker"]
    assert (breaker["state"], breaker["calls"], breaker["failures"]) == ("open", 20, 20)
    opened_at = datetime.fromisoformat(breaker["opened_at"])
    assert (datetime.fromisoformat(breaker["retry_at"]) - opened_at).total_seconds() == 30

    listed = (await client.get("/v1/providers", headers=tenant.headers)).json()
    by_id = {item["id"]: item["breaker"] for item in listed["data"]}
    assert by_id[failing["id"]] == breaker
    assert by_id[healthy["id"]] == {**CLOSED, "calls": 5, "failures": 1}


async def test_reset_closes_the_breaker_and_is_audited(
    client: httpx.AsyncClient, session: AsyncSession, breakers: CircuitBreakers
) -> None:
    owner = await make_tenant(session, "Resetter")
    config = await create(client, owner)
    await trip(breakers, owner, config["id"])
    path = f"/v1/providers/{config['id']}"

    response = await client.post(f"{path}/breaker/reset", headers=owner.headers)

    assert response.status_code == 200, response.text
    assert response.json()["id"] == config["id"] and response.json()["breaker"] == CLOSED
    assert (await client.get(path, headers=owner.headers)).json()["breaker"] == CLOSED
    assert (await breakers.admit(owner.tenant_id, config["id"], 3)).allowed == 3
    entry = await session.scalar(
        select(AuditEntry).where(
            AuditEntry.tenant_id == owner.tenant_id, AuditEntry.action == "provider.breaker_reset"
        )
    )
    assert entry is not None and entry.target == config["id"]
    assert entry.details["breaker"] == "open" and entry.details["failures"] == 20
    assert entry.details["fingerprint"] == config["fingerprint"]


async def test_reset_sends_the_messages_held_for_the_breaker_now(
    client: httpx.AsyncClient,
    session: AsyncSession,
    breakers: CircuitBreakers,
    service_urls: ServiceUrls,
) -> None:
    """A message a worker gave back to wait for the open breaker goes when the breaker is
    reset by hand, not at the time it was given."""
    owner = await make_tenant(session, "Held back")
    config = await create(client, owner)
    await trip(breakers, owner, config["id"])
    await put_template(client, owner, "hello", {"email": {"subject": "Hi", "text": "Hi"}})
    await put_recipient(client, owner, "ada", email="ada@example.com")
    accepted = await notify(client, owner, template="hello", to=["ada"])
    notification_id = uuid.UUID(accepted["id"])
    await dispatch(session, notification_id=notification_id, renderer=unmetered_renderer())
    await session.commit()
    # As the router leaves it: waiting until the breaker's retry time, noted beside it.
    later = utcnow() + timedelta(minutes=5)
    message_id = await session.scalar(
        update(Message)
        .where(Message.notification_id == notification_id)
        .values(next_attempt_at=later)
        .returning(Message.id)
    )
    await session.commit()
    assert message_id is not None
    await breakers.hold(owner.tenant_id, config["id"], [(message_id, later)])

    path = f"/v1/providers/{config['id']}/breaker/reset"
    response = await client.post(path, headers=owner.headers)

    assert response.status_code == 200, response.text
    session.expire_all()
    due = await session.scalar(select(Message.next_attempt_at).where(Message.id == message_id))
    assert due is not None and due < later - timedelta(minutes=4)
    waiting = [j for jobs in (await queued_jobs(service_urls.redis_url)).values() for j in jobs]
    assert [j for j in waiting if j.startswith(f"wait:{message_id}:1:")] != []


async def test_another_tenant_cannot_see_or_reset_it(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    other_tenant: TenantKey,
    breakers: CircuitBreakers,
) -> None:
    theirs = await create(client, other_tenant, name="Globex")
    await trip(breakers, other_tenant, theirs["id"])
    path = f"/v1/providers/{theirs['id']}"

    assert_problem(await client.get(path, headers=tenant.headers), 404, "not_found")
    assert_problem(
        await client.post(f"{path}/breaker/reset", headers=tenant.headers), 404, "not_found"
    )
    listed = (await client.get("/v1/providers", headers=tenant.headers)).json()
    assert theirs["id"] not in {item["id"] for item in listed["data"]}

    still = (await client.get(path, headers=other_tenant.headers)).json()
    assert still["breaker"]["state"] == "open"
    # The same route key under another tenant is another breaker.
    assert (await breakers.admit(tenant.tenant_id, theirs["id"], 2)).allowed == 2


async def test_reset_needs_a_live_key_with_manage(
    client: httpx.AsyncClient, session: AsyncSession, tenant: TenantKey
) -> None:
    config = await create(client, tenant)
    path = f"/v1/providers/{config['id']}/breaker/reset"
    test_key = await make_tenant(session, "Sandboxed", mode="test")
    assert_problem(await client.post(path, headers=test_key.headers), 403, "live_mode_required")
    reader = await make_tenant(session, "Reader", scopes=["send", "read"])
    assert_problem(await client.post(path, headers=reader.headers), 403, "insufficient_scope")
    missing = f"/v1/providers/{uuid.uuid4()}/breaker/reset"
    assert_problem(await client.post(missing, headers=tenant.headers), 404, "not_found")


async def test_without_redis_reads_answer_with_a_null_breaker(
    service_urls: ServiceUrls,
    session: AsyncSession,
    own_redis: tuple[subprocess.Popen[bytes], str],
) -> None:
    process, redis_url = own_redis
    owner = await make_tenant(session, "No Redis")
    async with ready_client(settings_for(service_urls.database_url, redis_url)) as client:
        config = await create(client, owner)
        path = f"/v1/providers/{config['id']}"
        assert (await client.get(path, headers=owner.headers)).json()["breaker"] == CLOSED

        process.kill()
        process.wait()

        one = await client.get(path, headers=owner.headers)
        assert one.status_code == 200 and one.json()["breaker"] is None
        listed: dict[str, Any] = (await client.get("/v1/providers", headers=owner.headers)).json()
        assert [item["breaker"] for item in listed["data"]] == [None]
        response = await client.post(f"{path}/breaker/reset", headers=owner.headers)
        assert_problem(response, 503, "service_unavailable")
    actions = await session.scalars(
        select(AuditEntry.action).where(AuditEntry.tenant_id == owner.tenant_id)
    )
    assert "provider.breaker_reset" not in list(actions)  # no reset, no entry
