"""The per-tenant retry policy: stored, validated and served; audited; isolated per tenant;
and read back tolerantly (`RetryPolicy.of`) from whatever JSON the row holds."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit import service as audit
from app.audit.models import AuditEntry
from app.delivery.retry import RetryPolicy
from app.tenants import delivery_controls
from app.tenants.models import Tenant
from tests.support import TenantKey, assert_problem, make_tenant

DEFAULT = {"object": "retry_policy", "max_attempts": 8, "window_hours": 24.0}


async def get_policy(client: httpx.AsyncClient, tenant: TenantKey) -> dict[str, Any]:
    response = await client.get("/v1/tenant/retry-policy", headers=tenant.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def put_policy(
    client: httpx.AsyncClient, tenant: TenantKey, body: dict[str, Any]
) -> httpx.Response:
    return await client.put("/v1/tenant/retry-policy", headers=tenant.headers, json=body)


async def stored(session: AsyncSession, tenant: TenantKey) -> Any:
    return await session.scalar(
        select(Tenant.retry_policy)
        .where(Tenant.id == tenant.tenant_id)
        .execution_options(populate_existing=True)
    )


async def test_defaults_then_round_trip(
    client: httpx.AsyncClient, tenant: TenantKey, session: AsyncSession
) -> None:
    assert await get_policy(client, tenant) == DEFAULT
    who = (await client.get("/v1/tenant", headers=tenant.headers)).json()
    assert who["retry_policy"] == DEFAULT

    response = await put_policy(client, tenant, {"max_attempts": 3, "window_hours": 2})
    assert response.status_code == 200, response.text
    changed = {"object": "retry_policy", "max_attempts": 3, "window_hours": 2.0}
    assert response.json() == changed
    assert await get_policy(client, tenant) == changed
    assert await stored(session, tenant) == {"max_attempts": 3, "window_hours": 2.0}
    who = (await client.get("/v1/tenant", headers=tenant.headers)).json()
    assert who["retry_policy"] == changed
    policy = await delivery_controls.get_retry_policy(session, tenant_id=tenant.tenant_id)
    assert policy == RetryPolicy(3, 2.0)
    assert policy.window == timedelta(hours=2)


async def test_put_replaces_the_whole_policy(client: httpx.AsyncClient, tenant: TenantKey) -> None:
    assert (await put_policy(client, tenant, {"max_attempts": 2, "window_hours": 6})).is_success
    response = await put_policy(client, tenant, {"max_attempts": 5})
    assert response.json() == {**DEFAULT, "max_attempts": 5}
    response = await put_policy(client, tenant, {"window_hours": 1.5})
    assert response.json() == {**DEFAULT, "window_hours": 1.5}
    assert (await put_policy(client, tenant, {})).json() == DEFAULT


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"max_attempts": 1, "window_hours": 1}, (1, 1.0)),
        ({"max_attempts": 20, "window_hours": 72}, (20, 72.0)),
        ({"max_attempts": 10, "window_hours": 0.5 + 0.75}, (10, 1.25)),
    ],
)
async def test_bounds_are_inclusive(
    client: httpx.AsyncClient, tenant: TenantKey, body: dict[str, Any], expected: tuple[int, float]
) -> None:
    response = await put_policy(client, tenant, body)
    assert response.status_code == 200, response.text
    assert (response.json()["max_attempts"], response.json()["window_hours"]) == expected


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": 21}, "max_attempts"),
        ({"max_attempts": 2.5}, "max_attempts"),
        ({"max_attempts": "three"}, "max_attempts"),
        ({"max_attempts": True}, "max_attempts"),
        ({"max_attempts": None}, "max_attempts"),
        ({"window_hours": 0.99}, "window_hours"),
        ({"window_hours": 72.01}, "window_hours"),
        ({"window_hours": "a day"}, "window_hours"),
        ({"window_hours": "100"}, "window_hours"),
        ({"max_attempts": 3, "backoff": "linear"}, "backoff"),
    ],
)
async def test_bad_input(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    session: AsyncSession,
    body: dict[str, Any],
    field: str,
) -> None:
    problem = assert_problem(await put_policy(client, tenant, body), 422, "validation_error")
    assert [e["field"] for e in problem["errors"]] == [field]  # type: ignore[attr-defined]
    assert await get_policy(client, tenant) == DEFAULT
    assert await stored(session, tenant) == {}


@pytest.mark.parametrize(
    ("policy", "field"),
    [
        (RetryPolicy(0, 24), "max_attempts"),
        (RetryPolicy(21, 24), "max_attempts"),
        (RetryPolicy(8, 0.5), "window_hours"),
        (RetryPolicy(8, float("nan")), "window_hours"),
        (RetryPolicy(8, float("inf")), "window_hours"),
    ],
)
async def test_the_service_refuses_what_the_api_would(
    session: AsyncSession, tenant: TenantKey, policy: RetryPolicy, field: str
) -> None:
    with pytest.raises(delivery_controls.SettingInvalid) as refused:
        await delivery_controls.set_retry_policy(
            session, tenant_id=tenant.tenant_id, policy=policy, actor="test"
        )
    assert refused.value.field == field
    await session.rollback()
    assert await stored(session, tenant) == {}


async def test_changes_are_audited(
    client: httpx.AsyncClient, tenant: TenantKey, session: AsyncSession
) -> None:
    await put_policy(client, tenant, {"max_attempts": 4, "window_hours": 12})
    await put_policy(client, tenant, {"max_attempts": 6})
    entries = (
        await session.scalars(
            select(AuditEntry)
            .where(
                AuditEntry.tenant_id == tenant.tenant_id,
                AuditEntry.action == "tenant.retry_policy",
            )
            .order_by(AuditEntry.seq)
        )
    ).all()
    assert [e.details for e in entries] == [
        {"max_attempts": 4, "window_hours": 12.0},
        {"max_attempts": 6, "window_hours": 24.0},
    ]
    assert {e.target for e in entries} == {str(tenant.tenant_id)}
    assert all(e.actor.startswith("api_key:") for e in entries)
    assert await audit.verify(session, tenant_id=tenant.tenant_id) == []


async def test_scopes(client: httpx.AsyncClient, session: AsyncSession) -> None:
    reader = await make_tenant(session, "Reader", scopes=["read"])
    sender = await make_tenant(session, "Sender", scopes=["send"])
    assert await get_policy(client, reader) == DEFAULT
    assert_problem(await put_policy(client, reader, {"max_attempts": 2}), 403, "insufficient_scope")
    response = await client.get("/v1/tenant/retry-policy", headers=sender.headers)
    assert_problem(response, 403, "insufficient_scope")
    assert await stored(session, reader) == {}


async def test_tenant_isolation(
    client: httpx.AsyncClient, tenant: TenantKey, other_tenant: TenantKey, session: AsyncSession
) -> None:
    response = await put_policy(client, other_tenant, {"max_attempts": 2, "window_hours": 3})
    assert response.status_code == 200, response.text
    assert await get_policy(client, tenant) == DEFAULT
    assert await stored(session, tenant) == {}
    assert (await get_policy(client, other_tenant))["max_attempts"] == 2

    await put_policy(client, tenant, {"max_attempts": 12})
    assert (await get_policy(client, other_tenant))["max_attempts"] == 2
    assert (await get_policy(client, tenant))["max_attempts"] == 12


@pytest.mark.parametrize(
    ("json", "expected"),
    [
        ({}, RetryPolicy(8, 24.0)),
        ({"max_attempts": 3}, RetryPolicy(3, 24.0)),
        ({"window_hours": 6}, RetryPolicy(8, 6.0)),
        ({"max_attempts": 20, "window_hours": 72.0}, RetryPolicy(20, 72.0)),
        ({"max_attempts": 0, "window_hours": 100}, RetryPolicy(8, 24.0)),
        ({"max_attempts": "3", "window_hours": None}, RetryPolicy(8, 24.0)),
        ({"max_attempts": True, "window_hours": False}, RetryPolicy(8, 24.0)),
        ({"max_attempts": 2.0, "unknown": 1}, RetryPolicy(8, 24.0)),
    ],
)
async def test_stored_json_is_read_tolerantly(
    session: AsyncSession, tenant: TenantKey, json: dict[str, Any], expected: RetryPolicy
) -> None:
    assert RetryPolicy.of(json) == expected
    # What delivery reads: the row as stored, however it got there.
    await session.execute(
        update(Tenant).where(Tenant.id == tenant.tenant_id).values(retry_policy=json)
    )
    await session.commit()
    read = await delivery_controls.get_retry_policy(session, tenant_id=tenant.tenant_id)
    assert read == expected
    assert isinstance(read.max_attempts, int) and isinstance(read.window_hours, float)
