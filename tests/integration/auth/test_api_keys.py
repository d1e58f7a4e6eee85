"""The API-key lifecycle over /v1/api-keys, bad input, and tenant isolation."""

from __future__ import annotations

import asyncio
import uuid

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.models import AuditEntry
from tests.support import TenantKey, assert_problem, make_tenant


async def test_create_use_list_and_revoke(client: httpx.AsyncClient, session: AsyncSession) -> None:
    owner = await make_tenant(session, "Lifecycle")
    created = await client.post(
        "/v1/api-keys", headers=owner.headers, json={"name": "ci", "scopes": ["send", "read"]}
    )
    assert created.status_code == 201, created.text
    key = created.json()
    assert key["secret"].startswith("hk_live_")  # the caller's mode by default
    assert key["prefix"] == key["secret"][:14]
    assert key["scopes"] == ["read", "send"]

    new_headers = {"Authorization": f"Bearer {key['secret']}"}
    assert (await client.get("/v1/tenant", headers=new_headers)).status_code == 200

    listed = (await client.get("/v1/api-keys", headers=owner.headers)).json()
    assert listed["object"] == "list"
    ids = [item["id"] for item in listed["data"]]
    assert ids == [key["id"], str(owner.key_id)]  # newest first
    assert all("secret" not in item for item in listed["data"])

    fetched = (await client.get(f"/v1/api-keys/{key['id']}", headers=owner.headers)).json()
    assert fetched["last_used_at"] is not None

    revoked = await client.delete(f"/v1/api-keys/{key['id']}", headers=owner.headers)
    assert revoked.status_code == 200
    assert revoked.json()["revoked_at"] is not None
    again = await client.delete(f"/v1/api-keys/{key['id']}", headers=owner.headers)
    assert again.json()["revoked_at"] == revoked.json()["revoked_at"]

    await asyncio.sleep(1.05)
    assert (await client.get("/v1/tenant", headers=new_headers)).status_code == 401

    actions = (
        await session.scalars(
            select(AuditEntry.action)
            .where(AuditEntry.tenant_id == owner.tenant_id)
            .order_by(AuditEntry.seq)
        )
    ).all()
    assert actions == ["tenant.created", "api_key.created", "api_key.created", "api_key.revoked"]


async def test_test_keys_cannot_mint_live_keys(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    sandbox = await make_tenant(session, "Sandbox", mode="test")
    body = {"name": "escalate", "mode": "live"}
    response = await client.post("/v1/api-keys", headers=sandbox.headers, json=body)
    problem = assert_problem(response, 403, "forbidden")
    assert problem["errors"] == [{"field": "mode", "message": "live keys need a live caller"}]
    ok = await client.post("/v1/api-keys", headers=sandbox.headers, json={"name": "t"})
    assert ok.json()["secret"].startswith("hk_test_")


async def test_pagination_walks_every_key_once(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    owner = await make_tenant(session, "Many keys")
    for n in range(4):
        await client.post("/v1/api-keys", headers=owner.headers, json={"name": f"k{n}"})
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/v1/api-keys", headers=owner.headers, params=params)).json()
        seen += [item["id"] for item in page["data"]]
        if not page["has_more"]:
            break
        cursor = page["next_cursor"]
    assert len(seen) == 5 and len(set(seen)) == 5


async def test_invalid_fields_are_named(client: httpx.AsyncClient, tenant: TenantKey) -> None:
    cases = [
        ({"name": ""}, "name"),
        ({"name": 5}, "name"),
        ({"name": "x", "scopes": ["root"]}, "scopes[0]"),
        ({"name": "x", "scopes": []}, "scopes"),
        ({"name": "x", "mode": "prod"}, "mode"),
        ({"name": "x", "colour": "red"}, "colour"),
        ({}, "name"),
    ]
    for body, field in cases:
        response = await client.post("/v1/api-keys", headers=tenant.headers, json=body)
        problem = assert_problem(response, 422, "validation_error")
        fields = [error["field"] for error in problem["errors"]]  # type: ignore[union-attr]
        assert field in fields, (body, problem)


async def test_malformed_json_and_oversized_bodies(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    headers = {**tenant.headers, "content-type": "application/json"}
    assert_problem(
        await client.post("/v1/api-keys", headers=headers, content=b"{nope"), 400, "invalid_json"
    )
    huge = b'{"name": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    assert_problem(
        await client.post("/v1/api-keys", headers=headers, content=huge), 413, "payload_too_large"
    )


async def test_bad_cursor_and_limit(client: httpx.AsyncClient, tenant: TenantKey) -> None:
    for params, field in (
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"cursor": "zz"}, "cursor"),
    ):
        problem = assert_problem(
            await client.get("/v1/api-keys", headers=tenant.headers, params=params),
            422,
            "validation_error",
        )
        assert problem["errors"][0]["field"] == field  # type: ignore[index]


async def test_tenants_cannot_see_or_touch_each_others_keys(
    client: httpx.AsyncClient, tenant: TenantKey, other_tenant: TenantKey
) -> None:
    listed = (await client.get("/v1/api-keys", headers=tenant.headers)).json()
    assert str(other_tenant.key_id) not in {item["id"] for item in listed["data"]}

    path = f"/v1/api-keys/{other_tenant.key_id}"
    assert_problem(await client.get(path, headers=tenant.headers), 404, "not_found")
    assert_problem(await client.delete(path, headers=tenant.headers), 404, "not_found")
    # The other tenant's key still works: nothing was revoked.
    assert (await client.get("/v1/tenant", headers=other_tenant.headers)).json()["id"] == str(
        other_tenant.tenant_id
    )
    assert_problem(
        await client.get(f"/v1/api-keys/{uuid.uuid4()}", headers=tenant.headers), 404, "not_found"
    )


async def test_the_service_refuses_what_the_schema_would(session: AsyncSession) -> None:
    import pytest

    from app.auth.keys import InvalidKeyRequest, issue_key

    owner = await make_tenant(session, "Direct caller")
    bad = [
        ({"name": "", "mode": "live", "scopes": ["send"]}, "name"),
        ({"name": "x" * 101, "mode": "live", "scopes": ["send"]}, "name"),
        ({"name": "x", "mode": "prod", "scopes": ["send"]}, "mode"),
        ({"name": "x", "mode": "live", "scopes": ["root"]}, "scopes"),
        ({"name": "x", "mode": "live", "scopes": []}, "scopes"),
    ]
    for arguments, field in bad:
        with pytest.raises(InvalidKeyRequest) as raised:
            await issue_key(session, tenant_id=owner.tenant_id, actor="t", **arguments)  # type: ignore[arg-type]
        assert raised.value.field == field


async def test_a_tenant_holds_a_bounded_number_of_keys(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    from app.auth.keys import MAX_ACTIVE_KEYS, issue_key

    owner = await make_tenant(session, "Many keys")
    for n in range(MAX_ACTIVE_KEYS - 1):
        await issue_key(
            session,
            tenant_id=owner.tenant_id,
            name=f"k{n}",
            mode="test",
            scopes=["read"],
            actor="t",
        )
    await session.commit()
    refused = await client.post("/v1/api-keys", headers=owner.headers, json={"name": "one more"})
    problem = assert_problem(refused, 409, "key_limit_reached")
    assert str(MAX_ACTIVE_KEYS) in problem["detail"]
    # Revoking one makes room again.
    listed = (await client.get("/v1/api-keys", headers=owner.headers, params={"limit": 1})).json()
    await client.delete(f"/v1/api-keys/{listed['data'][0]['id']}", headers=owner.headers)
    again = await client.post("/v1/api-keys", headers=owner.headers, json={"name": "one more"})
    assert again.status_code == 201, again.text


async def test_a_keys_own_limit_is_checked_and_shown(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    owner = await make_tenant(session, "Limited keys")
    for body, field in (
        ({"rate_per_second": 5}, "burst"),
        ({"burst": 5}, "rate_per_second"),
        ({"rate_per_second": 0, "burst": 5}, "rate_per_second"),
        ({"rate_per_second": 5, "burst": 0}, "burst"),
        ({"rate_per_second": 1e9, "burst": 5}, "rate_per_second"),
    ):
        answer = await client.post(
            "/v1/api-keys", headers=owner.headers, json={"name": "limited", **body}
        )
        problem = assert_problem(answer, 422, "validation_error")
        assert problem["errors"][0]["field"] == field, problem
    made = await client.post(
        "/v1/api-keys",
        headers=owner.headers,
        json={"name": "limited", "rate_per_second": 2.5, "burst": 5},
    )
    assert made.status_code == 201, made.text
    assert (made.json()["rate_per_second"], made.json()["burst"]) == (2.5, 5)
