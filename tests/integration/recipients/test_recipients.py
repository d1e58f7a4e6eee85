"""/v1/recipients: create-or-update, batches, reads, lists, erasure, scopes and isolation."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.models import AuditEntry
from app.recipients import service
from app.recipients.models import Preference, Recipient
from app.recipients.schemas import PushToken, RecipientInput
from tests.send_path import put_template
from tests.support import TenantKey, assert_problem, make_tenant

FULL = {
    "email": "Ada.Lovelace@Example.COM",
    "phone": "+1 (415) 555-0123",
    "push_tokens": [{"provider": "fcm", "token": "tok-1"}, {"provider": "apns", "token": "a1b2"}],
    "webhook_url": "https://hooks.example.com/ada",
    "locale": "fr_ca",
    "timezone": "Europe/Paris",
    "data": {"plan": "pro", "seats": 3},
}


async def put(
    client: httpx.AsyncClient, owner: TenantKey, external_id: str, body: dict[str, Any]
) -> httpx.Response:
    return await client.put(f"/v1/recipients/{external_id}", headers=owner.headers, json=body)


def fields_of(problem: dict[str, Any]) -> list[str]:
    return [error["field"] for error in problem["errors"]]


async def test_put_creates_then_updates_only_what_is_given(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    created = await put(client, tenant, "user-1", FULL)
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["object"] == "recipient" and body["external_id"] == "user-1"
    assert body["email"] == "Ada.Lovelace@example.com"  # the domain is normalised
    assert body["phone"] == "+14155550123"
    assert body["locale"] == "fr-CA"
    assert body["push_tokens"] == FULL["push_tokens"]
    assert body["erased_at"] is None

    updated = await put(client, tenant, "user-1", {"locale": "en", "webhook_url": None})
    assert updated.status_code == 200, updated.text
    after = updated.json()
    assert after["id"] == body["id"]
    assert after["locale"] == "en" and after["webhook_url"] is None  # given, and cleared
    for kept in ("email", "phone", "push_tokens", "timezone", "data"):
        assert after[kept] == body[kept], kept  # left out: unchanged
    assert after["updated_at"] > body["updated_at"]

    cleared = (await put(client, tenant, "user-1", {"push_tokens": None, "data": None})).json()
    assert cleared["push_tokens"] == [] and cleared["data"] == {}

    fetched = await client.get("/v1/recipients/user-1", headers=tenant.headers)
    assert fetched.status_code == 200 and fetched.json() == cleared


async def test_an_empty_body_creates_a_bare_recipient(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    response = await put(client, tenant, "bare@example.com", {})
    assert response.status_code == 201
    body = response.json()
    assert body["external_id"] == "bare@example.com"
    assert body["email"] is None and body["push_tokens"] == [] and body["data"] == {}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"email": "not-an-address"}, "email"),
        ({"email": "a@localhost"}, "email"),
        ({"email": 5}, "email"),
        ({"phone": "0612345678"}, "phone"),
        ({"phone": "+1 555 555 0100"}, "phone"),
        ({"phone": "call me"}, "phone"),
        ({"push_tokens": [{"provider": "wns", "token": "x"}]}, "push_tokens[0].provider"),
        ({"push_tokens": [{"provider": "fcm", "token": ""}]}, "push_tokens[0].token"),
        ({"push_tokens": [{"provider": "fcm"}]}, "push_tokens[0].token"),
        (
            {"push_tokens": [{"provider": "fcm", "token": f"t{n}"} for n in range(21)]},
            "push_tokens",
        ),
        ({"webhook_url": "ftp://example.com/x"}, "webhook_url"),
        ({"webhook_url": "https://"}, "webhook_url"),
        ({"webhook_url": "https://example.com:99999/"}, "webhook_url"),
        ({"locale": "english"}, "locale"),
        ({"locale": "en-"}, "locale"),
        ({"timezone": "Mars/Olympus_Mons"}, "timezone"),
        ({"timezone": "../../etc/passwd"}, "timezone"),
        ({"data": [1, 2]}, "data"),
        ({"data": {"blob": "x" * (16 * 1024)}}, "data"),
        ({"colour": "red"}, "colour"),
    ],
)
async def test_each_invalid_field_is_named(
    client: httpx.AsyncClient, tenant: TenantKey, body: dict[str, Any], field: str
) -> None:
    response = await put(client, tenant, "someone", body)
    problem = assert_problem(response, 422, "validation_error")
    # Unknown top-level fields are named in the message only (app/problems.py).
    assert field in fields_of(problem) or f"`{field}`" in str(problem["detail"]), problem
    assert (await client.get("/v1/recipients/someone", headers=tenant.headers)).status_code == 404


async def test_data_limit_is_16_kib_serialised(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    padding = 16 * 1024 - len('{"k":""}')
    assert (await put(client, tenant, "edge", {"data": {"k": "x" * padding}})).status_code == 201
    over = await put(client, tenant, "edge", {"data": {"k": "x" * (padding + 1)}})
    assert fields_of(assert_problem(over, 422, "validation_error")) == ["data"]


@pytest.mark.parametrize(
    ("external_id", "field"),
    [("erased:123", "external_id"), ("x" * 201, "external_id"), ("a%20b", "external_id")],
)
async def test_bad_external_ids_are_refused(
    client: httpx.AsyncClient, tenant: TenantKey, external_id: str, field: str
) -> None:
    problem = assert_problem(await put(client, tenant, external_id, {}), 422, "validation_error")
    assert fields_of(problem) == [field]


async def test_external_ids_with_url_characters_round_trip(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    for external_id in ("auth0|5f1c", "user:42", "ünïcode-✓", "a+b@example.com"):
        encoded = httpx.URL(f"/v1/recipients/{external_id}").raw_path.decode()
        response = await client.put(encoded, headers=tenant.headers, json={"locale": "de"})
        assert response.status_code == 201, (external_id, response.text)
        assert response.json()["external_id"] == external_id
        fetched = await client.get(encoded, headers=tenant.headers)
        assert fetched.json()["external_id"] == external_id


async def test_twenty_concurrent_puts_make_one_row(
    client: httpx.AsyncClient, tenant: TenantKey, session: AsyncSession
) -> None:
    responses = await asyncio.gather(
        *(put(client, tenant, "racer", {"data": {"n": n}}) for n in range(20))
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 19 + [201], [r.text for r in responses if r.status_code >= 300]
    assert len({r.json()["id"] for r in responses}) == 1
    rows = await session.scalar(
        select(func.count())
        .select_from(Recipient)
        .where(Recipient.tenant_id == tenant.tenant_id, Recipient.external_id == "racer")
    )
    assert rows == 1


async def test_list_filters_and_pages(client: httpx.AsyncClient, tenant: TenantKey) -> None:
    for n in range(5):
        await put(client, tenant, f"p{n}", {"email": f"P{n}@Example.com"})
    await put(client, tenant, "phoned", {"phone": "+33 6 12 34 56 78"})

    seen: list[str] = []
    cursor: str | None = None
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/v1/recipients", headers=tenant.headers, params=params)).json()
        seen += [item["external_id"] for item in page["data"]]
        if not page["has_more"]:
            break
        cursor = page["next_cursor"]
    assert seen == ["phoned", "p4", "p3", "p2", "p1", "p0"]  # newest first, each once

    by_email = await client.get(
        "/v1/recipients", headers=tenant.headers, params={"email": "p3@EXAMPLE.com"}
    )
    assert [r["external_id"] for r in by_email.json()["data"]] == ["p3"]
    for phone in ("+33612345678", "+33 6 12 34 56 78", " 33612345678"):
        by_phone = await client.get(
            "/v1/recipients", headers=tenant.headers, params={"phone": phone}
        )
        assert [r["external_id"] for r in by_phone.json()["data"]] == ["phoned"], phone
    nobody = await client.get(
        "/v1/recipients", headers=tenant.headers, params={"email": "nobody@example.com"}
    )
    assert nobody.json()["data"] == []
    for params, field in (
        ({"email": "nope"}, "email"),
        ({"phone": "+1"}, "phone"),
        ({"limit": "0"}, "limit"),
        ({"cursor": "zz"}, "cursor"),
    ):
        response = await client.get("/v1/recipients", headers=tenant.headers, params=params)
        assert fields_of(assert_problem(response, 422, "validation_error")) == [field]


async def test_batch_creates_and_updates_in_one_call(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    await put(client, tenant, "b1", {"email": "b1@example.com", "locale": "en"})
    await put(client, tenant, "b2", {"email": "b2@example.com", "locale": "en"})
    body = {
        "recipients": [
            {"external_id": "b1", "locale": "de"},  # email left out: kept
            {"external_id": "b2", "email": None},  # email cleared, locale kept
            {"external_id": "b3", "email": "B3@example.com", "timezone": "UTC"},
        ]
    }
    response = await client.post("/v1/recipients/batch", headers=tenant.headers, json=body)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["object"] == "recipient_batch"
    assert (result["created"], result["updated"]) == (1, 2)
    by_id = {r["external_id"]: r for r in result["data"]}
    assert [r["external_id"] for r in result["data"]] == ["b1", "b2", "b3"]
    assert (by_id["b1"]["email"], by_id["b1"]["locale"]) == ("b1@example.com", "de")
    assert (by_id["b2"]["email"], by_id["b2"]["locale"]) == (None, "en")
    assert (by_id["b3"]["email"], by_id["b3"]["timezone"]) == ("B3@example.com", "UTC")


async def test_batch_merges_an_id_given_twice(client: httpx.AsyncClient, tenant: TenantKey) -> None:
    body = {
        "recipients": [
            {"external_id": "twice", "email": "one@example.com", "locale": "en"},
            {"external_id": "twice", "email": "two@example.com"},
        ]
    }
    result = (await client.post("/v1/recipients/batch", headers=tenant.headers, json=body)).json()
    assert len(result["data"]) == 1
    assert (result["data"][0]["email"], result["data"][0]["locale"]) == ("two@example.com", "en")


async def test_a_bad_item_refuses_the_whole_batch(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    body = {
        "recipients": [
            {"external_id": "fine", "email": "fine@example.com"},
            {"external_id": "ok-too"},
            {"external_id": "bad-phone", "phone": "12"},
            {"external_id": "bad-email", "email": "@"},
        ]
    }
    response = await client.post("/v1/recipients/batch", headers=tenant.headers, json=body)
    problem = assert_problem(response, 422, "validation_error")
    assert fields_of(problem) == ["recipients[2].phone", "recipients[3].email"]
    assert (await client.get("/v1/recipients/fine", headers=tenant.headers)).status_code == 404

    reserved = {"recipients": [{"external_id": "batch"}]}
    response = await client.post("/v1/recipients/batch", headers=tenant.headers, json=reserved)
    problem = assert_problem(response, 422, "validation_error")
    assert fields_of(problem) == ["recipients[0].external_id"]

    typed = {"recipients": [{"external_id": "x"}, {"external_id": "y", "locale": 7}]}
    response = await client.post("/v1/recipients/batch", headers=tenant.headers, json=typed)
    assert fields_of(assert_problem(response, 422, "validation_error")) == ["recipients[1].locale"]


@pytest.mark.parametrize("timezone", ["Europe", "Etc", "America", "__pycache__", "UTC "])
async def test_a_tz_database_folder_is_not_a_timezone(
    client: httpx.AsyncClient, tenant: TenantKey, timezone: str
) -> None:
    """Every way a recipient is written names the field instead of failing on the folder."""
    put_one = await put(client, tenant, "tz", {"timezone": timezone})
    assert fields_of(assert_problem(put_one, 422, "validation_error")) == ["timezone"]

    batch = {"recipients": [{"external_id": "tz", "timezone": timezone}]}
    in_batch = await client.post("/v1/recipients/batch", headers=tenant.headers, json=batch)
    problem = assert_problem(in_batch, 422, "validation_error")
    assert fields_of(problem) == ["recipients[0].timezone"]

    await put_template(client, tenant, "tz", {"email": {"subject": "Hi", "text": "Hi"}})
    notification = {"template": "tz", "to": [{"external_id": "tz", "timezone": timezone}]}
    inline = await client.post("/v1/notifications", headers=tenant.headers, json=notification)
    assert fields_of(assert_problem(inline, 422, "validation_error")) == ["to[0].timezone"]
    assert (await client.get("/v1/recipients/tz", headers=tenant.headers)).status_code == 404


async def test_batches_hold_1_to_1000_recipients(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    too_many = {"recipients": [{"external_id": f"r{n}"} for n in range(1001)]}
    response = await client.post("/v1/recipients/batch", headers=tenant.headers, json=too_many)
    problem = assert_problem(response, 422, "validation_error")
    assert fields_of(problem) == ["recipients"]
    assert "1,000" in str(problem["detail"]) and "1,001" in str(problem["detail"])
    empty = await client.post(
        "/v1/recipients/batch", headers=tenant.headers, json={"recipients": []}
    )
    assert fields_of(assert_problem(empty, 422, "validation_error")) == ["recipients"]

    full = {"recipients": [{"external_id": f"r{n}", "locale": "en"} for n in range(1000)]}
    response = await client.post("/v1/recipients/batch", headers=tenant.headers, json=full)
    assert response.status_code == 200 and response.json()["created"] == 1000


async def test_erasure_removes_personal_data_and_frees_the_id(
    client: httpx.AsyncClient, tenant: TenantKey, session: AsyncSession
) -> None:
    original = (await put(client, tenant, "leaver", FULL)).json()
    await client.put(
        "/v1/recipients/leaver/preferences",
        headers=tenant.headers,
        json={"channels": {"sms": False}},
    )
    erased = await client.delete("/v1/recipients/leaver", headers=tenant.headers)
    assert erased.status_code == 200, erased.text
    body = erased.json()
    assert body["id"] == original["id"]
    assert body["external_id"] == f"erased:{original['id']}"
    assert body["erased_at"] is not None
    for field in ("email", "phone", "webhook_url", "locale", "timezone"):
        assert body[field] is None, field
    assert body["push_tokens"] == [] and body["data"] == {}

    assert (await client.get("/v1/recipients/leaver", headers=tenant.headers)).status_code == 404
    gone = await client.get(f"/v1/recipients/{body['external_id']}", headers=tenant.headers)
    assert gone.status_code == 404
    assert (await client.delete("/v1/recipients/leaver", headers=tenant.headers)).status_code == 404
    listed = (await client.get("/v1/recipients", headers=tenant.headers)).json()
    assert original["id"] not in {r["id"] for r in listed["data"]}

    # The row stays (delivery counts refer to it), emptied; its preferences are gone.
    row = await session.scalar(select(Recipient).where(Recipient.id == uuid.UUID(original["id"])))
    assert row is not None and row.erased_at is not None and row.email is None
    prefs = await session.scalar(
        select(func.count()).select_from(Preference).where(Preference.recipient_id == row.id)
    )
    assert prefs == 0
    entry = await session.scalar(
        select(AuditEntry).where(
            AuditEntry.tenant_id == tenant.tenant_id, AuditEntry.action == "recipient.erased"
        )
    )
    assert entry is not None and entry.target == original["id"]
    assert "leaver" not in str(entry.details) and "Ada" not in str(entry.details)

    again = await put(client, tenant, "leaver", {"email": "new@example.com"})
    assert again.status_code == 201 and again.json()["id"] != original["id"]


async def test_scopes(client: httpx.AsyncClient, session: AsyncSession) -> None:
    owner = await make_tenant(session, "Scopes")
    reader = await make_tenant(session, "Reader", scopes=["read"])
    sender = await make_tenant(session, "Sender", scopes=["send"])
    assert (await put(client, owner, "s1", {})).status_code == 201

    for response in (
        await put(client, reader, "s1", {}),
        await client.delete("/v1/recipients/s1", headers=reader.headers),
        await client.post(
            "/v1/recipients/batch",
            headers=reader.headers,
            json={"recipients": [{"external_id": "z"}]},
        ),
    ):
        problem = assert_problem(response, 403, "insufficient_scope")
        assert problem["required_scope"] == "send"
    assert (await client.get("/v1/recipients", headers=reader.headers)).status_code == 200

    assert (await put(client, sender, "s2", {})).status_code == 201
    for path in ("/v1/recipients", "/v1/recipients/s2", "/v1/recipients/s2/preferences"):
        problem = assert_problem(
            await client.get(path, headers=sender.headers), 403, "insufficient_scope"
        )
        assert problem["required_scope"] == "read"


async def test_tenants_cannot_see_or_touch_each_others_recipients(
    client: httpx.AsyncClient, tenant: TenantKey, other_tenant: TenantKey, session: AsyncSession
) -> None:
    mine = (await put(client, tenant, "shared-id", {"email": "mine@example.com"})).json()
    await put(client, tenant, "only-mine", {"email": "only@example.com"})

    # The same external id is another, independent recipient in the other tenant.
    theirs = await put(client, other_tenant, "shared-id", {"email": "theirs@example.com"})
    assert theirs.status_code == 201 and theirs.json()["id"] != mine["id"]

    for method, path in (
        ("GET", "/v1/recipients/only-mine"),
        ("DELETE", "/v1/recipients/only-mine"),
        ("GET", "/v1/recipients/only-mine/preferences"),
    ):
        response = await client.request(method, path, headers=other_tenant.headers)
        assert_problem(response, 404, "not_found")
    response = await client.put(
        "/v1/recipients/only-mine/preferences", headers=other_tenant.headers, json={}
    )
    assert_problem(response, 404, "not_found")

    listed = (await client.get("/v1/recipients", headers=other_tenant.headers)).json()
    assert [r["external_id"] for r in listed["data"]] == ["shared-id"]
    search = await client.get(
        "/v1/recipients", headers=other_tenant.headers, params={"email": "only@example.com"}
    )
    assert search.json()["data"] == []
    fetched = (await client.get("/v1/recipients/shared-id", headers=tenant.headers)).json()
    assert fetched["email"] == "mine@example.com"
    assert (await client.get("/v1/recipients/only-mine", headers=tenant.headers)).status_code == 200

    found = await service.get_by_external_ids(
        session,
        tenant_id=other_tenant.tenant_id,
        mode=other_tenant.mode,
        external_ids=["only-mine", "shared-id"],
    )
    assert [r.id for r in found] == [uuid.UUID(theirs.json()["id"])]


async def test_service_upsert_and_lookups(session: AsyncSession) -> None:
    owner = await make_tenant(session, "Direct")
    items = [
        RecipientInput(external_id="d2", email="d2@example.com"),
        RecipientInput(
            external_id="d1",
            phone="+14155550123",
            push_tokens=[PushToken(provider="apns", token="abc")],
            data={"name": "Dee"},
            locale="en-gb",
        ),
    ]
    stored = await service.upsert_recipients(
        session, tenant_id=owner.tenant_id, mode=owner.mode, items=items
    )
    await session.commit()
    assert [r.external_id for r in stored] == ["d2", "d1"]  # the order given
    assert stored[1].push_tokens == [{"provider": "apns", "token": "abc"}]

    found = await service.get_by_external_ids(
        session,
        tenant_id=owner.tenant_id,
        mode=owner.mode,
        external_ids=["d1", "missing", "d2", "d1"],
    )
    assert [r.external_id for r in found] == ["d1", "d2"]
    assert service.template_context(found[0]) == {
        "id": "d1",
        "email": None,
        "phone": "+14155550123",
        "locale": "en-GB",
        "timezone": None,
        "data": {"name": "Dee"},
    }

    await service.erase_recipient(
        session, tenant_id=owner.tenant_id, mode=owner.mode, external_id="d2", actor="t"
    )
    await session.commit()
    left = await service.get_by_external_ids(
        session, tenant_id=owner.tenant_id, mode=owner.mode, external_ids=["d1", "d2"]
    )
    assert [r.external_id for r in left] == ["d1"]

    bad = [RecipientInput(external_id="ok"), RecipientInput(external_id="x", phone="nope")]
    with pytest.raises(service.RecipientInvalid) as raised:
        await service.upsert_recipients(
            session, tenant_id=owner.tenant_id, mode=owner.mode, items=bad
        )
    assert (raised.value.field, raised.value.index) == ("phone", 1)
    assert raised.value.path() == "recipients[1].phone"
    assert isinstance(raised.value, ValueError)
    assert (
        await service.get_recipient(
            session, tenant_id=owner.tenant_id, mode=owner.mode, external_id="ok"
        )
        is None
    )

    too_many = [RecipientInput(external_id=f"n{n}") for n in range(1001)]
    with pytest.raises(service.RecipientInvalid) as raised:
        await service.upsert_recipients(
            session, tenant_id=owner.tenant_id, mode=owner.mode, items=too_many
        )
    assert (raised.value.field, raised.value.index) == ("recipients", None)


async def test_upserts_are_not_audited(
    client: httpx.AsyncClient, tenant: TenantKey, session: AsyncSession
) -> None:
    """Recipient writes are data, not configuration: they leave the audit log alone."""
    before = await session.scalar(
        select(func.count()).select_from(AuditEntry).where(AuditEntry.tenant_id == tenant.tenant_id)
    )
    await put(client, tenant, "unaudited", {"email": "secret@example.com"})
    after = await session.scalar(
        select(func.count()).select_from(AuditEntry).where(AuditEntry.tenant_id == tenant.tenant_id)
    )
    assert after == before
