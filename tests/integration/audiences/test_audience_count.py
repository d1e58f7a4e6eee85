"""POST /v1/audiences/count: the filter language on real PostgreSQL, its bounds, isolation
of tenants and modes, and the statement timeout that cancels a count."""

from __future__ import annotations

import contextlib
import uuid
from typing import Any

import httpx
import pytest
from litestar import Litestar
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.audiences import service
from app.audiences.filters import MAX_DEPTH, MAX_NODES, MAX_VALUES, Equals
from app.audiences.schemas import Audience
from app.recipients.models import Recipient
from tests.support import TenantKey, assert_problem, key_of

PATH = "/v1/audiences/count"
PEOPLE: list[dict[str, Any]] = [
    {
        "external_id": "u1",
        "email": "Ada@Example.com",
        "locale": "fr",
        "data": {"plan": "pro", "seats": 5, "address": {"country": "FR"}},
    },
    {
        "external_id": "u2",
        "email": "bob@example.com",
        "locale": "fr-CA",
        "data": {"plan": "free", "seats": 5.0},
    },
    {"external_id": "u3", "locale": "en", "data": {"plan": "pro", "churned_at": "2026-01-01"}},
    {"external_id": "u4", "phone": "+442071838750", "data": {"plan": None}},
    {"external_id": "u5"},
    {"external_id": "u6", "data": {"seats": "5"}},
]


async def count(client: httpx.AsyncClient, key: TenantKey, audience: Any) -> int:
    response = await client.post(PATH, headers=key.headers, json={"audience": audience})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "audience_count"
    result: int = body["recipients"]
    return result


def where(filter_: dict[str, Any]) -> dict[str, Any]:
    return {"filter": filter_}


def eq(field: str, value: Any) -> dict[str, Any]:
    return {"op": "equals", "field": field, "value": value}


@pytest.fixture
async def people(client: httpx.AsyncClient, tenant: TenantKey) -> None:
    response = await client.post(
        "/v1/recipients/batch", headers=tenant.headers, json={"recipients": PEOPLE}
    )
    assert response.status_code == 200, response.text


@pytest.mark.usefixtures("people")
async def test_filters_match_what_they_say(client: httpx.AsyncClient, tenant: TenantKey) -> None:
    cases: list[tuple[dict[str, Any], int]] = [
        ({"all": True}, 6),
        (where(eq("data.plan", "pro")), 2),
        (
            where(
                {
                    "op": "and",
                    "filters": [
                        eq("data.plan", "pro"),
                        {"op": "not", "filter": {"op": "exists", "field": "data.churned_at"}},
                    ],
                }
            ),
            1,
        ),
        (where({"op": "in", "field": "locale", "values": ["fr", "fr-CA"]}), 2),
        (where(eq("email", "ADA@example.COM")), 1),  # e-mail without case
        (where(eq("data.seats", 5)), 2),  # 5 and 5.0, not "5"
        (where(eq("data.seats", "5")), 1),
        (where({"op": "exists", "field": "data.plan"}), 4),  # a null is present
        (where({"op": "exists", "field": "phone"}), 1),
        # `not` matches those lacking the field too: everyone but the two pro plans.
        (where({"op": "not", "filter": eq("data.plan", "pro")}), 4),
        (where({"op": "or", "filters": [eq("data.plan", "free"), eq("external_id", "u6")]}), 2),
        (where(eq("data.address.country", "FR")), 1),
        (where({"op": "in", "field": "data.plan", "values": ["pro", "free", 7]}), 3),
        # Values are bound, never spliced into SQL.
        (where(eq("data.plan", "pro' OR 1=1 --")), 0),
        (where(eq("external_id", "u1' OR '1'='1")), 0),
        (where(eq("data.plan", True)), 0),
    ]
    for audience, expected in cases:
        assert await count(client, tenant, audience) == expected, audience
    # Erased recipients are nobody's audience.
    erased = await client.delete("/v1/recipients/u1", headers=tenant.headers)
    assert erased.status_code == 200
    assert await count(client, tenant, {"all": True}) == 5
    assert await count(client, tenant, where(eq("data.plan", "pro"))) == 1


@pytest.mark.usefixtures("people")
async def test_a_topic_counts_its_members(
    client: httpx.AsyncClient, tenant: TenantKey, session: AsyncSession
) -> None:
    made = await client.put("/v1/topics/news", headers=tenant.headers, json={"name": "News"})
    assert made.status_code == 201, made.text
    assert await count(client, tenant, {"topic": "news"}) == 0
    added = await client.post(
        "/v1/topics/news/members", headers=tenant.headers, json={"recipients": ["u1", "u2", "u3"]}
    )
    assert added.status_code == 200, added.text
    assert await count(client, tenant, {"topic": "news"}) == 3
    # The members as a condition on recipients (what a send will select) are those three.
    matched = service.condition(Audience(topic="news"), tenant_id=tenant.tenant_id, mode="live")
    members = await session.scalars(
        select(Recipient.external_id).where(
            Recipient.tenant_id == tenant.tenant_id, Recipient.mode == "live", matched
        )
    )
    assert sorted(members) == ["u1", "u2", "u3"]
    erased = await client.delete("/v1/recipients/u2", headers=tenant.headers)
    assert erased.status_code == 200
    assert await count(client, tenant, {"topic": "news"}) == 2
    missing = await client.post(PATH, headers=tenant.headers, json={"audience": {"topic": "nope"}})
    assert_problem(missing, 422, "validation_error")
    assert [e["field"] for e in missing.json()["errors"]] == ["audience.topic"]


@pytest.mark.usefixtures("people")
async def test_counts_stay_in_the_tenant_and_mode(
    client: httpx.AsyncClient, tenant: TenantKey, other_tenant: TenantKey, session: AsyncSession
) -> None:
    assert await count(client, other_tenant, {"all": True}) == 0
    assert await count(client, other_tenant, where(eq("data.plan", "pro"))) == 0
    test_key = await key_of(session, tenant, "test")
    assert await count(client, test_key, {"all": True}) == 0
    made = await client.put(
        "/v1/recipients/t1", headers=test_key.headers, json={"data": {"plan": "pro"}}
    )
    assert made.status_code == 201
    assert await count(client, test_key, where(eq("data.plan", "pro"))) == 1
    assert await count(client, tenant, where(eq("data.plan", "pro"))) == 2


async def test_bad_audiences_are_refused_naming_the_field(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    deep: dict[str, Any] = eq("data.a", 1)
    for _ in range(MAX_DEPTH):
        deep = {"op": "not", "filter": deep}
    wide = {
        "op": "or",
        "filters": [{"op": "and", "filters": [eq("data.a", i)] * 20} for i in range(3)],
    }
    cases: list[tuple[Any, str]] = [
        ({"all": True, "filter": eq("data.a", 1)}, "audience"),
        ({}, "audience"),
        ({"all": False}, "audience.all"),
        (where({"op": "matches", "field": "email"}), "audience.filter.op"),
        (where(eq("data.a;drop", 1)), "audience.filter.field"),
        (where(eq("password", "x")), "audience.filter.field"),
        (where(eq("data." + ".".join("abcdef"), 1)), "audience.filter.field"),
        (where(eq("locale", 3)), "audience.filter.value"),
        (
            where({"op": "in", "field": "email", "values": ["a@b.co", 3]}),
            "audience.filter.values[1]",
        ),
        (
            where({"op": "in", "field": "data.a", "values": list(range(MAX_VALUES + 1))}),
            "audience.filter.values",
        ),
        (where({"op": "in", "field": "data.a", "values": []}), "audience.filter.values"),
        (where({"op": "and", "filters": []}), "audience.filter.filters"),
        (where(deep), "audience.filter" + ".filter" * MAX_DEPTH),
        (where(wide), "audience.filter"),
        (where(eq("data.a", {"nested": 1})), "audience.filter.value"),
    ]
    assert MAX_NODES < 3 * 21 + 1  # `wide` is over the node bound, within the others
    for audience, field in cases:
        response = await client.post(PATH, headers=tenant.headers, json={"audience": audience})
        assert_problem(response, 422, "validation_error")
        assert [e["field"] for e in response.json()["errors"]] == [field], (audience, response.text)


async def test_a_count_needs_the_read_scope(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    from tests.support import make_tenant

    sender = await make_tenant(session, "Sender", scopes=["send"])
    refused = await client.post(PATH, headers=sender.headers, json={"audience": {"all": True}})
    assert_problem(refused, 403, "insufficient_scope")


async def test_a_count_past_its_time_limit_is_cancelled(session: AsyncSession) -> None:
    tenant_id = uuid.uuid4()
    await session.execute(
        text("INSERT INTO tenants (id, name, plan) VALUES (:id, 'Big', 'free')"), {"id": tenant_id}
    )
    # Enough rows that matching them takes far longer than a millisecond.
    await session.execute(
        text(
            "INSERT INTO recipients (id, tenant_id, mode, external_id, data) "
            "SELECT gen_random_uuid(), :id, 'live', 'r' || n, jsonb_build_object('n', n) "
            "FROM generate_series(1, 200000) AS n"
        ),
        {"id": tenant_id},
    )
    await session.commit()
    try:
        audience = Audience(filter=Equals(field="data.n", value=-1))
        with pytest.raises(service.CountTimedOut):
            await service.count(
                session,
                tenant_id=tenant_id,
                mode="live",
                audience=audience,
                slots=service.CountSlots(),
                timeout_ms=1,
            )
        # The limit was the count's own: the session goes on without it.
        again = await service.count(
            session,
            tenant_id=tenant_id,
            mode="live",
            audience=audience,
            slots=service.CountSlots(),
        )
        assert again == 0
        assert (await session.execute(text("SHOW statement_timeout"))).scalar_one() == "0"
    finally:
        await session.rollback()
        await session.execute(text("DELETE FROM tenants WHERE id = :id"), {"id": tenant_id})
        await session.commit()


async def test_counts_run_one_per_tenant_and_a_few_per_process(
    app: Litestar, client: httpx.AsyncClient, tenant: TenantKey, other_tenant: TenantKey
) -> None:
    slots: service.CountSlots = app.state.count_slots
    body = {"audience": {"all": True}}
    with slots.slot(tenant.tenant_id):  # a count of this tenant under way
        busy = await client.post(PATH, headers=tenant.headers, json=body)
        assert_problem(busy, 429, "rate_limited")
        assert busy.headers["retry-after"] == "1"
        # Another tenant is not held up by it.
        assert (await client.post(PATH, headers=other_tenant.headers, json=body)).status_code == 200
    assert (await client.post(PATH, headers=tenant.headers, json=body)).status_code == 200
    # With every slot of the process taken, counts wait for one: 503 with Retry-After.
    others = [uuid.uuid4() for _ in range(slots.total)]
    with contextlib.ExitStack() as held:
        for other in others:
            held.enter_context(slots.slot(other))
        full = await client.post(PATH, headers=tenant.headers, json=body)
        assert_problem(full, 503, "busy")
    assert (await client.post(PATH, headers=tenant.headers, json=body)).status_code == 200
