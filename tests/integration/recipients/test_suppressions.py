"""/v1/suppressions and add_suppressions: adding, listing, lifting, validation, isolation."""

from __future__ import annotations

import os
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.models import AuditEntry
from app.crypto import Keyring
from app.recipients import service, suppressions
from app.recipients.models import Suppression
from tests.support import TenantKey, assert_problem, make_tenant


def fields_of(problem: dict[str, Any]) -> list[str]:
    return [error["field"] for error in problem["errors"]]


async def add(client: httpx.AsyncClient, owner: TenantKey, **body: Any) -> httpx.Response:
    return await client.post("/v1/suppressions", headers=owner.headers, json=body)


async def test_add_list_and_lift(
    client: httpx.AsyncClient, tenant: TenantKey, session: AsyncSession
) -> None:
    created = await add(client, tenant, channel="email", address="Bounced@Example.com")
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["object"] == "suppression"
    assert (body["address"], body["reason"]) == ("bounced@example.com", "manual")
    assert body["source"] == f"api_key:{tenant.secret[:14]}"

    again = await add(client, tenant, channel="email", address="BOUNCED@example.com")
    assert again.status_code == 200 and again.json()["id"] == body["id"]

    await add(client, tenant, channel="sms", address="+1 415 555 0123", reason="unsubscribed")
    await add(client, tenant, channel="push", address="fcm:tok-1", source="import:legacy")
    await add(client, tenant, channel="webhook", address="https://hooks.example.com/x")
    await add(client, tenant, channel="inbox", address="user-9")

    listed = (await client.get("/v1/suppressions", headers=tenant.headers)).json()
    assert [s["channel"] for s in listed["data"]] == ["inbox", "webhook", "push", "sms", "email"]
    params: dict[str, str]
    for params, expected in (
        ({"channel": "sms"}, ["+14155550123"]),
        ({"address": "+14155550123"}, ["+14155550123"]),
        ({"channel": "sms", "address": "+1 (415) 555-0123"}, ["+14155550123"]),
        ({"address": "BOUNCED@example.com"}, ["bounced@example.com"]),
        ({"channel": "push", "address": "bounced@example.com"}, []),
    ):
        page = await client.get("/v1/suppressions", headers=tenant.headers, params=params)
        assert [s["address"] for s in page.json()["data"]] == expected, params

    seen: list[str] = []
    cursor: str | None = None
    while True:
        query = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/v1/suppressions", headers=tenant.headers, params=query)).json()
        seen += [s["id"] for s in page["data"]]
        if not page["has_more"]:
            break
        cursor = page["next_cursor"]
    assert len(seen) == len(set(seen)) == 5

    lifted = await client.delete(f"/v1/suppressions/{body['id']}", headers=tenant.headers)
    assert lifted.status_code == 200 and lifted.json()["id"] == body["id"]
    gone = await client.delete(f"/v1/suppressions/{body['id']}", headers=tenant.headers)
    assert_problem(gone, 404, "not_found")

    actions = (
        await session.scalars(
            select(AuditEntry.action).where(
                AuditEntry.tenant_id == tenant.tenant_id,
                AuditEntry.action.like("suppression.%"),
            )
        )
    ).all()
    assert sorted(actions) == ["suppression.added"] * 5 + ["suppression.removed"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"channel": "email", "address": "not-an-address"}, "address"),
        ({"channel": "sms", "address": "12345"}, "address"),
        ({"channel": "push", "address": "wns:abc"}, "address"),
        ({"channel": "push", "address": "fcm:"}, "address"),
        ({"channel": "webhook", "address": "javascript:alert(1)"}, "address"),
        ({"channel": "inbox", "address": "a/b"}, "address"),
        ({"channel": "fax", "address": "x"}, "channel"),
        ({"channel": "email", "address": "a@example.com", "reason": "annoyed"}, "reason"),
        ({"channel": "email", "address": ""}, "address"),
        ({"channel": "email"}, "address"),
    ],
)
async def test_invalid_suppressions_are_named(
    client: httpx.AsyncClient, tenant: TenantKey, body: dict[str, Any], field: str
) -> None:
    response = await client.post("/v1/suppressions", headers=tenant.headers, json=body)
    problem = assert_problem(response, 422, "validation_error")
    assert field in fields_of(problem) or f"`{field}`" in str(problem["detail"]), problem


async def test_bad_filters(client: httpx.AsyncClient, tenant: TenantKey) -> None:
    for params, field in (({"channel": "fax"}, "channel"), ({"cursor": "x"}, "cursor")):
        response = await client.get("/v1/suppressions", headers=tenant.headers, params=params)
        assert fields_of(assert_problem(response, 422, "validation_error")) == [field]
    response = await client.delete("/v1/suppressions/not-a-uuid", headers=tenant.headers)
    assert response.status_code in (404, 422)


async def test_scopes(client: httpx.AsyncClient, session: AsyncSession) -> None:
    reader = await make_tenant(session, "Suppression reader", scopes=["read"])
    sender = await make_tenant(session, "Suppression sender", scopes=["send"])
    response = await add(client, reader, channel="email", address="a@example.com")
    assert assert_problem(response, 403, "insufficient_scope")["required_scope"] == "send"
    assert (await client.get("/v1/suppressions", headers=reader.headers)).status_code == 200
    created = await add(client, sender, channel="email", address="a@example.com")
    assert created.status_code == 201
    listed = await client.get("/v1/suppressions", headers=sender.headers)
    assert assert_problem(listed, 403, "insufficient_scope")["required_scope"] == "read"
    path = f"/v1/suppressions/{created.json()['id']}"
    # Lifting a suppression removes bounce protection: that is configuration, scope `manage`.
    refused = await client.delete(path, headers=sender.headers)
    assert assert_problem(refused, 403, "insufficient_scope")["required_scope"] == "manage"
    manager = await make_tenant(session, "Suppression manager", scopes=["send", "manage"])
    mine = await add(client, manager, channel="email", address="a@example.com")
    lifted = await client.delete(f"/v1/suppressions/{mine.json()['id']}", headers=manager.headers)
    assert lifted.status_code == 200


async def test_tenants_cannot_see_or_lift_each_others_suppressions(
    client: httpx.AsyncClient, tenant: TenantKey, other_tenant: TenantKey
) -> None:
    mine = (await add(client, tenant, channel="email", address="private@example.com")).json()
    theirs = await add(client, other_tenant, channel="email", address="private@example.com")
    assert theirs.status_code == 201 and theirs.json()["id"] != mine["id"]

    response = await client.delete(f"/v1/suppressions/{mine['id']}", headers=other_tenant.headers)
    assert_problem(response, 404, "not_found")
    listed = (await client.get("/v1/suppressions", headers=other_tenant.headers)).json()
    assert [s["id"] for s in listed["data"]] == [theirs.json()["id"]]
    still = (await client.get("/v1/suppressions", headers=tenant.headers)).json()
    assert [s["id"] for s in still["data"]] == [mine["id"]]
    missing = await client.delete(f"/v1/suppressions/{uuid.uuid4()}", headers=tenant.headers)
    assert_problem(missing, 404, "not_found")


async def test_add_suppressions_in_bulk(session: AsyncSession) -> None:
    owner = await make_tenant(session, "Bulk suppressions")
    entries = [
        ("email", "One@Example.com", "hard_bounce", "sendgrid"),
        ("email", "one@example.com", "complaint", "sendgrid"),  # the same address: kept once
        ("sms", "+1 415 555 0123", "unsubscribed", "twilio"),
        ("push", "fcm:dead-token", "unregistered_device", "fcm"),
    ]
    await service.add_suppressions(
        session, tenant_id=owner.tenant_id, mode=owner.mode, entries=entries
    )
    await service.add_suppressions(
        session, tenant_id=owner.tenant_id, mode=owner.mode, entries=entries[:1]
    )
    await service.add_suppressions(session, tenant_id=owner.tenant_id, mode=owner.mode, entries=[])
    await session.commit()
    rows = (
        await session.execute(
            select(Suppression.channel, Suppression.address, Suppression.reason)
            .where(Suppression.tenant_id == owner.tenant_id)
            .order_by(Suppression.channel)
        )
    ).all()
    assert [tuple(r) for r in rows] == [
        ("email", "one@example.com", "hard_bounce"),
        ("push", "fcm:dead-token", "unregistered_device"),
        ("sms", "+14155550123", "unsubscribed"),
    ]
    for bad in (
        [("fax", "x", "manual", "t")],
        [("email", "x@example.com", "bored", "t")],
        [("email", "  ", "manual", "t")],
    ):
        with pytest.raises(ValueError):
            await service.add_suppressions(
                session, tenant_id=owner.tenant_id, mode=owner.mode, entries=bad
            )
    count = await session.scalar(
        select(func.count())
        .select_from(Suppression)
        .where(Suppression.tenant_id == owner.tenant_id)
    )
    assert count == 3


async def test_hidden_addresses_still_match_across_tenants_keys_and_duplicates(
    session: AsyncSession,
) -> None:
    owner, other = await make_tenant(session, "Hiding"), await make_tenant(session, "Not hiding")
    k1, k2 = os.urandom(32), os.urandom(32)
    old, new, rotated = (
        Keyring([("k1", k1)]),
        Keyring([("k2", k2)]),
        Keyring([("k2", k2), ("k1", k1)]),
    )
    bounce = [("email", "Gone@Example.com", "hard_bounce", "smtp")]
    for tenant_id in (owner.tenant_id, other.tenant_id):
        await service.add_suppressions(session, tenant_id=tenant_id, mode="live", entries=bounce)
    await suppressions.hide_addresses(
        session,
        tenant_id=owner.tenant_id,
        mode=owner.mode,
        addresses=[("email", "gone@example.COM")],
        keyring=old,
    )
    # Suppressed again in the clear (a bounce reported late), then hidden again: one row.
    await service.add_suppressions(
        session, tenant_id=owner.tenant_id, mode=owner.mode, entries=bounce
    )
    await suppressions.hide_addresses(
        session,
        tenant_id=owner.tenant_id,
        mode=owner.mode,
        addresses=[("email", "GONE@example.com")],
        keyring=old,
    )
    await session.commit()
    stored = await session.scalars(
        select(Suppression.address).where(Suppression.tenant_id == owner.tenant_id)
    )
    [digest] = list(stored)
    assert digest.startswith("erased:") and "gone" not in digest.lower()

    wanted = [("email", "gone@example.com")]
    for ring, found in ((old, True), (rotated, True), (new, False)):
        hits = await suppressions.suppressed(
            session, tenant_id=owner.tenant_id, mode=owner.mode, pairs=wanted, keyring=ring
        )
        assert hits == (set(wanted) if found else set()), ring.key_ids
    # The other tenant's suppression of the same address stays as it was.
    clear = await suppressions.suppressed(
        session, tenant_id=other.tenant_id, mode=other.mode, pairs=wanted, keyring=old
    )
    assert clear == set(wanted)
    assert (
        await session.scalar(
            select(Suppression.address).where(Suppression.tenant_id == other.tenant_id)
        )
        == "gone@example.com"
    )
