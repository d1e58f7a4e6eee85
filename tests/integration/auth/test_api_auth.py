"""API-key authentication: every failure mode is a 401/403 problem+json, never a 500."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.keys import generate_secret
from app.auth.models import ApiKey
from tests.support import TenantKey, assert_problem, make_tenant


async def test_who_am_i(client: httpx.AsyncClient, tenant: TenantKey) -> None:
    response = await client.get("/v1/tenant", headers=tenant.headers)
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == str(tenant.tenant_id)
    assert body["name"] == "Acme"
    assert body["api_key"]["id"] == str(tenant.key_id)
    assert body["api_key"]["prefix"] == tenant.secret[:14]
    assert response.headers["x-request-id"].startswith("req_")


@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        ({}, "No API key"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "must be `Bearer"),
        ({"Authorization": "Bearer "}, "must be `Bearer"),
        ({"Authorization": "Bearer sk_live_123"}, "malformed"),
        ({"Authorization": "Bearer hk_live_short"}, "malformed"),
        ({"Authorization": f"Bearer {generate_secret('live')}"}, "not recognised"),
    ],
)
async def test_bad_credentials_get_401(
    client: httpx.AsyncClient, headers: dict[str, str], detail: str
) -> None:
    body = assert_problem(await client.get("/v1/tenant", headers=headers), 401, "unauthorized")
    assert detail in str(body["detail"])


async def test_401_carries_a_bearer_challenge(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/api-keys")
    assert response.headers["www-authenticate"].startswith("Bearer")


async def test_revoked_key_gets_401_naming_revocation(
    client: httpx.AsyncClient, tenant: TenantKey, session: AsyncSession
) -> None:
    other = await make_tenant(session, "Acme second key holder")
    response = await client.delete(f"/v1/api-keys/{other.key_id}", headers=other.headers)
    assert response.status_code == 200
    await asyncio.sleep(1.05)  # the per-process cache trusts a key for at most 1 s
    body = assert_problem(
        await client.get("/v1/tenant", headers=other.headers), 401, "unauthorized"
    )
    assert "revoked" in str(body["detail"])


async def test_missing_scope_gets_403(client: httpx.AsyncClient, session: AsyncSession) -> None:
    sender = await make_tenant(session, "Scoped", scopes=["send"])
    body = assert_problem(
        await client.get("/v1/api-keys", headers=sender.headers), 403, "insufficient_scope"
    )
    assert body["required_scope"] == "manage"
    # A key without `manage` still answers who-am-I.
    assert (await client.get("/v1/tenant", headers=sender.headers)).status_code == 200


async def test_last_used_at_is_recorded(client: httpx.AsyncClient, session: AsyncSession) -> None:
    fresh = await make_tenant(session, "Fresh")
    before = await session.scalar(select(ApiKey.last_used_at).where(ApiKey.id == fresh.key_id))
    assert before is None
    assert (await client.get("/v1/tenant", headers=fresh.headers)).status_code == 200
    session.expire_all()
    after = await session.scalar(select(ApiKey.last_used_at).where(ApiKey.id == fresh.key_id))
    assert after is not None


async def test_unknown_route_and_method_are_problems(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    assert_problem(await client.get("/nowhere"), 404, "not_found")
    response = await client.put("/v1/tenant", headers=tenant.headers)
    assert_problem(response, 405, "method_not_allowed")
    assert "GET" in response.headers["allow"]
