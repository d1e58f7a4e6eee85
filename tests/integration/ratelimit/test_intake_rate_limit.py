"""The API's rate limit: 429 with its headers, one bucket per tenant and mode, keys' own
limits, plans, Redis down."""

from __future__ import annotations

import asyncio
import subprocess
import time

import httpx
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth import keys
from app.ratelimit.buckets import INBOX_BURST, INBOX_RATE
from app.runtime import ServiceUrls
from app.tenants.models import Tenant
from app.tenants.plans import limits_for
from tests.support import TenantKey, assert_problem, make_tenant, ready_client, settings_for

FREE = limits_for("free")


async def exhaust(
    client: httpx.AsyncClient, headers: dict[str, str], path: str = "/v1/tenant"
) -> tuple[int, float, httpx.Response]:
    """Requests in rounds of 20 until one is refused: (accepted, seconds spent, the 429)."""
    accepted = 0
    started = time.monotonic()
    for _ in range(100):
        answers = await asyncio.gather(*(client.get(path, headers=headers) for _ in range(20)))
        accepted += sum(a.status_code == 200 for a in answers)
        assert {a.status_code for a in answers} <= {200, 429}, [a.text for a in answers]
        refused = [a for a in answers if a.status_code == 429]
        if refused:
            return accepted, time.monotonic() - started, refused[0]
    raise AssertionError(f"never refused after {accepted} requests")


async def refused_among(client: httpx.AsyncClient, headers: dict[str, str], path: str) -> bool:
    """Whether a round of 20 requests right away meets a refusal. One request alone could
    find a token refilled since the bucket ran dry; twenty cannot all find one."""
    answers = await asyncio.gather(*(client.get(path, headers=headers) for _ in range(20)))
    return any(a.status_code == 429 for a in answers)


async def test_a_key_over_its_burst_gets_429_with_headers(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    accepted, elapsed, refused = await exhaust(client, tenant.headers)
    # The free plan: a burst of 100, then 25 a second.
    assert FREE.api_burst <= accepted <= FREE.api_burst + FREE.api_rate * elapsed
    problem = assert_problem(refused, 429, "rate_limited")
    retry_after = int(refused.headers["retry-after"])
    assert retry_after >= 1 and problem["retry_after"] == retry_after
    assert refused.headers["ratelimit-limit"] == "100"
    assert refused.headers["ratelimit-remaining"] == "0"
    assert int(refused.headers["ratelimit-reset"]) >= 1
    assert "25 requests per second" in problem["detail"]
    assert "bursts of 100" in problem["detail"]
    assert f"retry in {retry_after} s" in problem["detail"]


async def test_success_carries_the_limit_and_what_remains(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    first = await client.get("/v1/tenant", headers=tenant.headers)
    second = await client.get("/v1/tenant", headers=tenant.headers)
    assert first.status_code == second.status_code == 200
    assert first.headers["ratelimit-limit"] == second.headers["ratelimit-limit"] == "100"
    assert first.headers["ratelimit-remaining"] == "99"
    assert int(second.headers["ratelimit-remaining"]) <= 99
    assert "ratelimit-reset" not in first.headers and "retry-after" not in first.headers


async def _issue(
    session: AsyncSession, tenant: TenantKey, mode: str, **limits: float
) -> dict[str, str]:
    issued = await keys.issue_key(
        session,
        tenant_id=tenant.tenant_id,
        name=f"another {mode} key",
        mode=mode,
        scopes=["read"],
        actor="test",
        **limits,  # type: ignore[arg-type]
    )
    await session.commit()
    return {"Authorization": f"Bearer {issued.secret}"}


async def test_a_tenants_keys_share_one_bucket_per_mode(
    client: httpx.AsyncClient, session: AsyncSession, tenant: TenantKey, other_tenant: TenantKey
) -> None:
    second_live = await _issue(session, tenant, "live")
    test_key = await _issue(session, tenant, "test")
    await exhaust(client, tenant.headers)
    # More keys buy no more requests: the tenant's other live key is refused as well...
    assert await refused_among(client, second_live, "/v1/tenant")
    refused = await client.get("/v1/tenant", headers=second_live)
    if refused.status_code == 429:
        assert "live-mode keys of this tenant together" in refused.json()["detail"]
    # ...while test traffic, which has a bucket of its own, cannot use up the live requests.
    own = await client.get("/v1/tenant", headers=test_key)
    assert own.status_code == 200 and own.headers["ratelimit-remaining"] == "99"
    other = await client.get("/v1/tenant", headers=other_tenant.headers)
    assert other.status_code == 200 and other.headers["ratelimit-remaining"] == "99"


async def test_a_key_may_have_a_lower_limit_of_its_own(
    client: httpx.AsyncClient, session: AsyncSession, tenant: TenantKey
) -> None:
    capped = await _issue(session, tenant, "live", rate_per_second=1.0, burst=5)
    accepted, _, refused = await exhaust(client, capped)
    assert 5 <= accepted <= 7  # its burst, and what a second refilled at 1/s
    problem = assert_problem(refused, 429, "rate_limited")
    assert "this API key may make 1 requests per second (bursts of 5)" in problem["detail"]
    assert refused.headers["ratelimit-limit"] == "5"
    # The tenant's bucket is far from empty: its other keys go on.
    answer = await client.get("/v1/tenant", headers=tenant.headers)
    assert answer.status_code == 200 and answer.headers["ratelimit-limit"] == "100"


async def test_the_tenants_plan_sets_the_limit(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    big = await make_tenant(session, "Big")
    await session.execute(update(Tenant).where(Tenant.id == big.tenant_id).values(plan="growth"))
    await session.commit()
    response = await client.get("/v1/tenant", headers=big.headers)
    assert response.headers["ratelimit-limit"] == str(limits_for("growth").api_burst)


async def test_inbox_tokens_share_a_bucket_per_recipient(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    put = await client.put("/v1/recipients/mia", headers=tenant.headers, json={})
    assert put.status_code in (200, 201), put.text
    tokens = [
        (await client.post("/v1/recipients/mia/inbox-token", headers=tenant.headers)).json()[
            "token"
        ]
        for _ in range(2)
    ]
    first, second = ({"Authorization": f"Bearer {token}"} for token in tokens)
    path = "/v1/recipients/mia/inbox"
    answer = await client.get(path, headers=first)
    assert answer.status_code == 200 and answer.headers["ratelimit-limit"] == str(INBOX_BURST)
    accepted, elapsed, refused = await exhaust(client, first, path)
    assert accepted <= INBOX_BURST + INBOX_RATE * elapsed
    assert_problem(refused, 429, "rate_limited")
    # Another token of the same recipient draws on the same bucket; the key does not.
    assert await refused_among(client, second, path)
    assert (await client.get(path, headers=tenant.headers)).status_code == 200


async def test_requests_go_through_when_redis_is_down(
    service_urls: ServiceUrls,
    session: AsyncSession,
    own_redis: tuple[subprocess.Popen[bytes], str],
) -> None:
    process, redis_url = own_redis
    holder = await make_tenant(session, "No Redis")
    async with ready_client(settings_for(service_urls.database_url, redis_url)) as client:
        limited = await client.get("/v1/tenant", headers=holder.headers)
        assert limited.status_code == 200 and limited.headers["ratelimit-remaining"] == "99"

        process.kill()
        process.wait()
        # Beyond the burst, unlimited: no bucket can be checked, so none refuses.
        answers = [
            await client.get("/v1/tenant", headers=holder.headers)
            for _ in range(FREE.api_burst + 20)
        ]
        assert {a.status_code for a in answers} == {200}
        assert all("ratelimit-limit" not in a.headers for a in answers)
        stored = await client.put("/v1/recipients/offline", headers=holder.headers, json={})
        assert stored.status_code in (200, 201), stored.text
