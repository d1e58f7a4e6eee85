"""Categories, recipients' preferences, and planning deliveries from both plus suppressions."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.categories import service as categories
from app.categories.service import CategoryView
from app.channels import CHANNELS
from app.recipients import service
from app.recipients.planning import PlannedDelivery
from app.recipients.schemas import PushToken, RecipientInput
from tests.support import TenantKey, assert_problem, make_tenant

ALL_ON = dict.fromkeys(CHANNELS, True)


def fields_of(problem: dict[str, Any]) -> list[str]:
    return [error["field"] for error in problem["errors"]]


async def test_preferences_default_to_enabled_and_merge(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    await client.put("/v1/recipients/pat", headers=tenant.headers, json={})
    path = "/v1/recipients/pat/preferences"
    initial = await client.get(path, headers=tenant.headers)
    assert initial.status_code == 200
    assert initial.json() == {"channels": ALL_ON, "categories": {}, "topics": {}}

    first = {
        "channels": {"sms": False},
        "categories": {"marketing": {"email": False, "push": True}},
    }
    response = await client.put(path, headers=tenant.headers, json=first)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "channels": {**ALL_ON, "sms": False},
        "categories": {"marketing": {"email": False, "push": True}},
        "topics": {},
    }

    # Only what is given changes.
    second = {"categories": {"marketing": {"email": True}, "digest": {"inbox": False}}}
    await client.put(path, headers=tenant.headers, json=second)
    assert (await client.get(path, headers=tenant.headers)).json() == {
        "channels": {**ALL_ON, "sms": False},
        "categories": {
            "digest": {"inbox": False},
            "marketing": {"email": True, "push": True},
        },
        "topics": {},
    }


async def test_invalid_preferences_are_named(client: httpx.AsyncClient, tenant: TenantKey) -> None:
    await client.put("/v1/recipients/pat", headers=tenant.headers, json={})
    path = "/v1/recipients/pat/preferences"
    cases = [
        ({"channels": {"fax": False}}, "channels.fax"),
        ({"categories": {"Bad Key": {"email": False}}}, "categories.Bad Key"),
        ({"categories": {"*": {"email": False}}}, "categories.*"),
        ({"categories": {"marketing": {"pigeon": False}}}, "categories.marketing.pigeon"),
        ({"categories": {f"c{n}": {"email": False} for n in range(101)}}, "categories"),
    ]
    for body, field in cases:
        response = await client.put(path, headers=tenant.headers, json=body)
        assert fields_of(assert_problem(response, 422, "validation_error")) == [field], body
    typed = await client.put(path, headers=tenant.headers, json={"channels": {"sms": "no"}})
    assert_problem(typed, 422, "validation_error")
    unknown = await client.put("/v1/recipients/nobody/preferences", headers=tenant.headers, json={})
    assert_problem(unknown, 404, "not_found")


async def test_categories_have_defaults_and_can_be_overridden(
    client: httpx.AsyncClient, tenant: TenantKey, other_tenant: TenantKey
) -> None:
    listed = (await client.get("/v1/categories", headers=tenant.headers)).json()
    assert [(c["key"], c["critical"], c["default"]) for c in listed["data"]] == [
        ("marketing", False, True),
        ("security", True, True),
        ("transactional", False, True),
    ]

    created = await client.put(
        "/v1/categories/billing.invoices",
        headers=tenant.headers,
        json={"name": "Invoices", "description": "Monthly invoices"},
    )
    assert created.status_code == 201, created.text
    assert created.json()["critical"] is False and created.json()["default"] is False

    overridden = await client.put(
        "/v1/categories/marketing", headers=tenant.headers, json={"name": "News", "critical": True}
    )
    assert overridden.status_code == 200  # a default existed already
    again = await client.put(
        "/v1/categories/billing.invoices", headers=tenant.headers, json={"name": "Bills"}
    )
    assert again.status_code == 200 and again.json()["name"] == "Bills"

    keys = {
        c["key"]: c
        for c in (await client.get("/v1/categories", headers=tenant.headers)).json()["data"]
    }
    assert set(keys) == {"billing.invoices", "marketing", "security", "transactional"}
    assert keys["marketing"]["name"] == "News" and keys["marketing"]["critical"] is True

    # The other tenant still sees only the defaults.
    theirs = (await client.get("/v1/categories", headers=other_tenant.headers)).json()["data"]
    assert {c["key"]: c["name"] for c in theirs} == {
        "marketing": "Marketing",
        "security": "Security",
        "transactional": "Transactional",
    }


async def test_invalid_categories_are_named(client: httpx.AsyncClient, tenant: TenantKey) -> None:
    cases = [
        ("Upper", {"name": "x"}, "key"),
        ("-dash-first", {"name": "x"}, "key"),
        ("x" * 65, {"name": "x"}, "key"),
        ("fine", {"name": ""}, "name"),
        ("fine", {"name": "   "}, "name"),
        ("fine", {}, "name"),
        ("fine", {"name": "x", "critical": "yes"}, "critical"),
        ("fine", {"name": "x", "description": "d" * 501}, "description"),
    ]
    for key, body, field in cases:
        response = await client.put(f"/v1/categories/{key}", headers=tenant.headers, json=body)
        problem = assert_problem(response, 422, "validation_error")
        assert field in fields_of(problem) or f"`{field}`" in str(problem["detail"]), problem


async def test_get_category(session: AsyncSession, client: httpx.AsyncClient) -> None:
    owner = await make_tenant(session, "Categories")
    other = await make_tenant(session, "Other categories")
    view = await categories.get_category(
        session, tenant_id=owner.tenant_id, mode=owner.mode, key="security"
    )
    assert view == CategoryView(key="security", name="Security", critical=True)
    assert (
        await categories.get_category(
            session, tenant_id=owner.tenant_id, mode=owner.mode, key="nope"
        )
        is None
    )

    await client.put(
        "/v1/categories/otp", headers=owner.headers, json={"name": "OTP", "critical": True}
    )
    await client.put(
        "/v1/categories/security", headers=owner.headers, json={"name": "Sec", "critical": False}
    )
    assert await categories.get_category(
        session, tenant_id=owner.tenant_id, mode=owner.mode, key="otp"
    ) == (CategoryView(key="otp", name="OTP", critical=True))
    overridden = await categories.get_category(
        session, tenant_id=owner.tenant_id, mode=owner.mode, key="security"
    )
    assert overridden is not None and overridden.critical is False
    assert (
        await categories.get_category(
            session, tenant_id=other.tenant_id, mode=other.mode, key="otp"
        )
        is None
    )


@contextmanager
def count_queries(engine: AsyncEngine) -> Iterator[list[str]]:
    statements: list[str] = []

    def record(*args: Any) -> None:
        statements.append(args[2])

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)


async def _people(session: AsyncSession, tenant: TenantKey) -> dict[str, Any]:
    items = [
        RecipientInput(
            external_id="full",
            email="Full@Example.com",
            phone="+14155550123",
            push_tokens=[PushToken("fcm", "tok-a"), PushToken("apns", "tok-b")],
            webhook_url="https://hooks.example.com/full",
        ),
        RecipientInput(external_id="empty"),
        RecipientInput(external_id="no-marketing", email="nm@example.com", phone="+33612345678"),
        RecipientInput(external_id="no-sms", email="ns@example.com", phone="+33612345679"),
    ]
    people = await service.upsert_recipients(
        session, tenant_id=tenant.tenant_id, mode=tenant.mode, items=items
    )
    await session.commit()
    return {p.external_id: p for p in people}


async def test_plan_deliveries(
    client: httpx.AsyncClient, tenant: TenantKey, session: AsyncSession, engine: AsyncEngine
) -> None:
    people = await _people(session, tenant)
    await client.put(
        "/v1/recipients/no-marketing/preferences",
        headers=tenant.headers,
        json={"categories": {"marketing": {"email": False}}},
    )
    await client.put(
        "/v1/recipients/no-sms/preferences",
        headers=tenant.headers,
        json={"channels": {"sms": False}},
    )
    await service.add_suppressions(
        session,
        tenant_id=tenant.tenant_id,
        mode=tenant.mode,
        entries=[
            ("email", "FULL@example.COM", "hard_bounce", "sendgrid"),  # any case
            ("push", "apns:tok-b", "unregistered_device", "apns"),
            ("email", "nm@example.com", "complaint", "ses"),
            ("sms", "+14155550123", "manual", "support"),
        ],
    )
    await session.commit()
    marketing = await categories.get_category(
        session, tenant_id=tenant.tenant_id, mode=tenant.mode, key="marketing"
    )
    assert marketing is not None
    channels = ["email", "sms", "push", "webhook", "inbox"]

    with count_queries(engine) as statements:
        plans = await service.plan_deliveries(
            session,
            tenant_id=tenant.tenant_id,
            mode=tenant.mode,
            recipients=list(people.values()),
            channels=channels,
            category=marketing,
        )
    assert len(statements) == 2, statements

    def plan(external_id: str) -> list[tuple[str, str, str | None]]:
        recipient_id = people[external_id].id
        return [
            (p.channel, p.address, p.skip_reason) for p in plans if p.recipient_id == recipient_id
        ]

    assert plan("full") == [
        ("email", "Full@example.com", "suppressed"),
        ("sms", "+14155550123", "suppressed"),
        ("push", "fcm:tok-a", None),
        ("push", "apns:tok-b", "suppressed"),
        ("webhook", "https://hooks.example.com/full", None),
        ("inbox", "full", None),
    ]
    assert plan("empty") == [
        ("email", "", "no_address"),
        ("sms", "", "no_address"),
        ("push", "", "no_address"),
        ("webhook", "", "no_address"),
        ("inbox", "empty", None),
    ]
    assert plan("no-marketing")[:2] == [
        ("email", "nm@example.com", "opted_out"),  # opted out wins over suppressed
        ("sms", "+33612345678", None),
    ]
    assert plan("no-sms")[:2] == [
        ("email", "ns@example.com", None),
        ("sms", "+33612345679", "opted_out"),
    ]
    assert all(isinstance(p, PlannedDelivery) for p in plans)

    # A critical category ignores opt-outs (one query fewer), never suppressions.
    security = await categories.get_category(
        session, tenant_id=tenant.tenant_id, mode=tenant.mode, key="security"
    )
    assert security is not None and security.critical
    with count_queries(engine) as statements:
        critical = await service.plan_deliveries(
            session,
            tenant_id=tenant.tenant_id,
            mode=tenant.mode,
            recipients=[people["no-marketing"], people["no-sms"]],
            channels=["email", "sms"],
            category=CategoryView(key="marketing", name="Marketing", critical=True),
        )
    assert len(statements) == 1
    assert [(p.channel, p.skip_reason) for p in critical] == [
        ("email", "suppressed"),
        ("sms", None),
        ("email", None),
        ("sms", None),
    ]


async def test_plans_ignore_other_tenants_suppressions_and_preferences(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    mine = await make_tenant(session, "Planner")
    theirs = await make_tenant(session, "Other planner")
    for owner in (mine, theirs):
        await client.put(
            "/v1/recipients/same", headers=owner.headers, json={"email": "same@example.com"}
        )
    await client.put(
        "/v1/recipients/same/preferences",
        headers=theirs.headers,
        json={"channels": {"email": False}},
    )
    await service.add_suppressions(
        session,
        tenant_id=theirs.tenant_id,
        mode=theirs.mode,
        entries=[("email", "same@example.com", "hard_bounce", "test")],
    )
    await session.commit()
    [person] = await service.get_by_external_ids(
        session, tenant_id=mine.tenant_id, mode=mine.mode, external_ids=["same"]
    )
    transactional = await categories.get_category(
        session, tenant_id=mine.tenant_id, mode=mine.mode, key="transactional"
    )
    assert transactional is not None
    plans = await service.plan_deliveries(
        session,
        tenant_id=mine.tenant_id,
        mode=mine.mode,
        recipients=[person],
        channels=["email"],
        category=transactional,
    )
    assert [(p.address, p.skip_reason) for p in plans] == [("same@example.com", None)]
    assert (
        await service.plan_deliveries(
            session,
            tenant_id=mine.tenant_id,
            mode=mine.mode,
            recipients=[],
            channels=["email"],
            category=transactional,
        )
        == []
    )


async def test_changing_a_category_needs_manage(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    sender = await make_tenant(session, "Category sender", scopes=["send", "read"])
    response = await client.put(
        "/v1/categories/otp", headers=sender.headers, json={"name": "OTP", "critical": True}
    )
    assert response.status_code == 403
    assert response.json()["required_scope"] == "manage"
