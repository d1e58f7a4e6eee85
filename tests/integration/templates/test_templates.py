"""/v1/templates: versions, the concurrent-save race, preview, delete, bad input, isolation."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.models import AuditEntry
from app.templates.limits import MAX_SOURCE_BYTES
from app.templates.service import get_template
from tests.support import TenantKey, assert_problem, make_tenant

WELCOME: dict[str, Any] = {
    "name": "Welcome",
    "category": "onboarding",
    "content": {
        "email": {
            "subject": "Welcome, {{ recipient.name }}",
            "html": "<p>Hello {{ recipient.name }}, order {{ order_id }}</p>",
            "text": "Hello {{ recipient.name }}",
        },
        "sms": {"text": "Order {{ order_id }} shipped"},
    },
    "locales": {
        "fr": {"sms": {"text": "Commande {{ order_id }} expédiée"}},
        "fr-CA": {"email": {"subject": "Bienvenue", "text": "Allô {{ recipient.name }}"}},
    },
}


def sms_template(text: str) -> dict[str, Any]:
    return {"content": {"sms": {"text": text}}}


async def put(
    client: httpx.AsyncClient, owner: TenantKey, key: str, body: dict[str, Any]
) -> httpx.Response:
    return await client.put(f"/v1/templates/{key}", headers=owner.headers, json=body)


def error_fields(response: httpx.Response) -> dict[str, str]:
    problem = assert_problem(response, 422, "validation_error")
    return {e["field"]: e["message"] for e in problem["errors"]}  # type: ignore[attr-defined]


async def put_category(client: httpx.AsyncClient, owner: TenantKey, key: str) -> None:
    response = await client.put(f"/v1/categories/{key}", headers=owner.headers, json={"name": key})
    assert response.status_code in (200, 201), response.text


async def test_saves_create_immutable_versions(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    owner = await make_tenant(session, "Versions")
    await put_category(client, owner, "onboarding")
    first = await put(client, owner, "welcome", WELCOME)
    assert first.status_code == 201, first.text
    body = first.json()
    assert (body["object"], body["key"], body["version"]) == ("template", "welcome", 1)
    assert body["channels"] == ["email", "sms"]
    assert body["locale_names"] == ["fr", "fr-CA"]
    assert body["content"]["sms"] == {"text": "Order {{ order_id }} shipped"}
    assert body["locales"]["fr-CA"]["email"]["subject"] == "Bienvenue"
    assert (body["category"], body["default_locale"], body["name"]) == (
        "onboarding",
        "en",
        "Welcome",
    )
    assert body["created_by"] == f"api_key:{owner.secret[:14]}"

    second = await put(client, owner, "welcome", sms_template("v2 {{ x }}"))
    assert second.json()["version"] == 2
    assert second.json()["name"] == "welcome"  # no name given: the key

    latest = (await client.get("/v1/templates/welcome", headers=owner.headers)).json()
    assert latest["version"] == 2 and latest["channels"] == ["sms"]
    old = await client.get("/v1/templates/welcome?version=1", headers=owner.headers)
    assert old.json()["content"] == body["content"]  # version 1 is unchanged
    assert_problem(
        await client.get("/v1/templates/welcome?version=3", headers=owner.headers), 404, "not_found"
    )

    versions = (await client.get("/v1/templates/welcome/versions", headers=owner.headers)).json()
    assert [v["version"] for v in versions["data"]] == [2, 1]
    assert "content" not in versions["data"][0]

    found = await get_template(session, tenant_id=owner.tenant_id, mode=owner.mode, key="welcome")
    assert found is not None and found.version == 2 and found.channels == ["sms"]
    pinned = await get_template(
        session, tenant_id=owner.tenant_id, mode=owner.mode, key="welcome", version=1
    )
    assert pinned is not None and pinned.locales["fr"]["sms"]["text"].startswith("Commande")

    actions = (
        await session.execute(
            select(AuditEntry.action, AuditEntry.target, AuditEntry.details)
            .where(AuditEntry.tenant_id == owner.tenant_id, AuditEntry.action.like("template.%"))
            .order_by(AuditEntry.seq)
        )
    ).all()
    assert [(a, t, d["version"]) for a, t, d in actions] == [
        ("template.saved", "welcome", 1),
        ("template.saved", "welcome", 2),
    ]


async def test_concurrent_saves_get_consecutive_versions(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    owner = await make_tenant(session, "Race")
    await put(client, owner, "race", sms_template("v1"))
    responses = await asyncio.gather(
        *(put(client, owner, "race", sms_template(f"writer {n}")) for n in range(6))
    )
    assert [r.status_code for r in responses] == [201] * 6, [r.text for r in responses]
    assert sorted(r.json()["version"] for r in responses) == [2, 3, 4, 5, 6, 7]
    # Each answer shows the content it saved, under the version it got.
    for response in responses:
        saved = await client.get(
            f"/v1/templates/race?version={response.json()['version']}", headers=owner.headers
        )
        assert saved.json()["content"] == response.json()["content"]


async def test_preview_renders_every_channel_with_per_channel_errors(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    await put_category(client, tenant, "onboarding")
    await put(client, tenant, "preview-me", WELCOME)
    body = {"data": {"order_id": "<42>"}, "recipient": {"name": "Zoë"}}
    response = await client.post(
        "/v1/templates/preview-me/preview", headers=tenant.headers, json=body
    )
    assert response.status_code == 200, response.text
    preview = response.json()
    assert (preview["object"], preview["version"], preview["locale"]) == (
        "template_preview",
        1,
        None,
    )
    email = preview["channels"]["email"]
    assert email["ok"] and email["locale"] == "en"
    assert email["content"]["channel"] == "email"
    assert email["content"]["html"] == "<p>Hello Zoë, order &lt;42&gt;</p>"
    assert email["content"]["subject"] == "Welcome, Zoë"
    assert "sms" not in email
    sms = preview["channels"]["sms"]
    assert sms["content"] == {"channel": "sms", "text": "Order <42> shipped"}
    assert sms["sms"] == {"length": 18, "encoding": "GSM-7", "segments": 1}

    # Without a recipient: the email fails naming the variable, the sms still renders.
    response = await client.post(
        "/v1/templates/preview-me/preview",
        headers=tenant.headers,
        json={"data": {"order_id": "😀"}, "locale": "fr-CA"},
    )
    assert response.status_code == 200
    channels = response.json()["channels"]
    assert channels["email"] == {
        "locale": "fr-CA",
        "ok": False,
        "error": {"field": "email.text", "message": "'recipient' is undefined"},
    }
    assert channels["sms"]["locale"] == "fr"
    assert channels["sms"]["content"]["text"] == "Commande 😀 expédiée"
    assert channels["sms"]["sms"] == {"length": 20, "encoding": "UCS-2", "segments": 1}


async def test_preview_of_a_missing_variable_and_a_runaway_template(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    await put(client, tenant, "strict", sms_template("Order {{ order_id }}"))
    preview = (
        await client.post("/v1/templates/strict/preview", headers=tenant.headers, json={})
    ).json()
    assert preview["channels"]["sms"]["error"] == {
        "field": "sms.text",
        "message": "'order_id' is undefined",
    }
    loops = "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"
    await put(client, tenant, "runaway", sms_template(loops))
    response = await client.post("/v1/templates/runaway/preview", headers=tenant.headers, json={})
    assert response.json()["channels"]["sms"]["error"]["message"] == (
        "rendering took longer than the 100 ms limit"
    )
    escape = sms_template("{{ ''.__class__.__mro__ }}")
    await put(client, tenant, "escape", escape)
    response = await client.post("/v1/templates/escape/preview", headers=tenant.headers, json={})
    assert "unsafe" in response.json()["channels"]["sms"]["error"]["message"]


async def test_preview_of_a_given_version_and_multipart_sms(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    await put(client, tenant, "long", sms_template("{{ 'a' * n }}"))
    await put(client, tenant, "long", sms_template("{{ '€' * n }}"))
    for version, n, stats in (
        (1, 161, {"length": 161, "encoding": "GSM-7", "segments": 2}),
        (2, 80, {"length": 160, "encoding": "GSM-7", "segments": 1}),
    ):
        response = await client.post(
            "/v1/templates/long/preview",
            headers=tenant.headers,
            json={"data": {"n": n}, "version": version},
        )
        assert response.json()["version"] == version
        assert response.json()["channels"]["sms"]["sms"] == stats


async def test_syntax_errors_are_refused_naming_field_and_line(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    body = {
        "content": {
            "email": {"subject": "Hi {{ name }", "text": "ok"},
            "sms": {"text": "fine"},
        },
        "locales": {"fr": {"sms": {"text": "line one\n{% if x %}never closed"}}},
    }
    fields = error_fields(await put(client, tenant, "broken", body))
    assert set(fields) == {"content.email.subject", "locales.fr.sms.text"}
    assert fields["content.email.subject"].startswith("line 1: unexpected '}'")
    assert fields["locales.fr.sms.text"].startswith("line 2: Unexpected end of template")
    assert_problem(
        await client.get("/v1/templates/broken", headers=tenant.headers), 404, "not_found"
    )


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "content"),
        ({"content": {}}, "content"),
        ({"content": {"fax": {"text": "x"}}}, "content"),
        ({"content": {"email": {"subject": "s"}}}, "content.email"),
        ({"content": {"email": {"text": "t"}}}, "content.email"),
        ({"content": {"email": {"subject": "", "text": "t"}}}, "content.email.subject"),
        ({"content": {"sms": {"text": 5}}}, "content.sms.text"),
        ({"content": {"push": {"title": "t", "body": "b", "data": {"k": 1}}}}, "content.push.data"),
        ({"content": {"webhook": {"body": ["not", "an", "object"]}}}, "content.webhook.body"),
        ({"content": {"sms": {"text": "x"}}, "locales": {"not a tag": {}}}, "locales.not a tag"),
        ({"content": {"sms": {"text": "x"}}, "locales": {"fr": {}}}, "locales.fr"),
        (
            {"content": {"sms": {"text": "x"}}, "locales": {"en": {"sms": {"text": "y"}}}},
            "locales.en",
        ),
        (
            {
                "content": {"sms": {"text": "x"}},
                "locales": {"fr": {"push": {"title": "t", "body": "b"}}},
            },
            "locales.fr.push",
        ),
        (
            {
                "content": {"sms": {"text": "x"}},
                "locales": {"fr": {"sms": {"text": "y"}}, "FR": {"sms": {"text": "z"}}},
            },
            "locales.FR",
        ),
        ({"content": {"sms": {"text": "x"}}, "default_locale": "english!"}, "default_locale"),
        ({"content": {"sms": {"text": "x"}}, "category": "Not A Key"}, "category"),
        ({"content": {"sms": {"text": "x"}}, "name": ""}, "name"),
        ({"content": {"sms": {"text": "x"}}, "colour": "red"}, "colour"),
    ],
)
async def test_bad_input_is_refused_naming_the_field(
    client: httpx.AsyncClient, tenant: TenantKey, body: dict[str, Any], field: str
) -> None:
    response = await put(client, tenant, "bad", body)
    fields = error_fields(response)
    assert field in fields or any(field in name or field in m for name, m in fields.items()), (
        body,
        fields,
    )


async def test_a_category_the_tenant_lacks_is_refused_at_save(
    client: httpx.AsyncClient, tenant: TenantKey, other_tenant: TenantKey
) -> None:
    body = {"content": {"sms": {"text": "x"}}, "category": "billing"}
    assert "billing" in error_fields(await put(client, tenant, "invoice", body))["category"]
    assert_problem(
        await client.get("/v1/templates/invoice", headers=tenant.headers), 404, "not_found"
    )
    # Reported together with the template's other errors.
    broken = {"content": {"sms": {"text": "{% if %}"}}, "category": "billing"}
    assert set(error_fields(await put(client, tenant, "invoice", broken))) == {
        "category",
        "content.sms.text",
    }
    # The built-in categories exist without a row; a created one exists for its tenant only.
    for default in ("transactional", "marketing", "security"):
        saved = await put(client, tenant, "invoice", {**body, "category": default})
        assert saved.status_code == 201, saved.text
    await put_category(client, other_tenant, "billing")
    assert "category" in error_fields(await put(client, tenant, "invoice", body))
    await put_category(client, tenant, "billing")
    saved = await put(client, tenant, "invoice", body)
    assert (saved.status_code, saved.json()["category"]) == (201, "billing")


async def test_bad_keys_and_parameters(client: httpx.AsyncClient, tenant: TenantKey) -> None:
    for key in ("Upper", "-dash", "a" * 101, "sp ace"):
        assert "key" in error_fields(await put(client, tenant, key, sms_template("x")))
        assert "key" in error_fields(
            await client.get(f"/v1/templates/{key}", headers=tenant.headers)
        )
    await put(client, tenant, "ok.key_1-2", sms_template("x"))
    for params in ({"version": "0"}, {"version": "x"}):
        response = await client.get(
            "/v1/templates/ok.key_1-2", headers=tenant.headers, params=params
        )
        assert "version" in error_fields(response)
    response = await client.post(
        "/v1/templates/ok.key_1-2/preview", headers=tenant.headers, json={"locale": "??"}
    )
    assert "locale" in error_fields(response)
    response = await client.post(
        "/v1/templates/ok.key_1-2/preview", headers=tenant.headers, json={"version": 0}
    )
    assert "version" in error_fields(response)
    response = await client.get("/v1/templates", headers=tenant.headers, params={"limit": "0"})
    assert "limit" in error_fields(response)


@pytest.mark.parametrize("version", [2**31, 1_099_511_627_776, 10**30])
async def test_versions_past_the_integer_column_are_refused(
    client: httpx.AsyncClient, tenant: TenantKey, version: int
) -> None:
    """Versions are PostgreSQL integers: a larger number is bad input, not a failed query."""
    await put(client, tenant, "big", sms_template("x"))
    for path, params in (("big", {"version": version}), ("big/versions", {"cursor": version})):
        response = await client.get(f"/v1/templates/{path}", headers=tenant.headers, params=params)
        assert set(error_fields(response)) == set(params), response.text
    response = await client.post(
        "/v1/templates/big/preview", headers=tenant.headers, json={"version": version}
    )
    assert set(error_fields(response)) == {"version"}
    # The largest integer is a version that may exist: it is looked up, and not found.
    largest = 2**31 - 1
    response = await client.get(f"/v1/templates/big?version={largest}", headers=tenant.headers)
    assert_problem(response, 404, "not_found")
    response = await client.get(
        f"/v1/templates/big/versions?cursor={largest}", headers=tenant.headers
    )
    assert [v["version"] for v in response.json()["data"]] == [1]


async def test_oversized_templates_are_refused(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    big = "x" * (MAX_SOURCE_BYTES + 1)
    fields = error_fields(await put(client, tenant, "huge", sms_template(big)))
    assert str(MAX_SOURCE_BYTES) in fields["content"]
    half = "y" * (MAX_SOURCE_BYTES // 2)
    body = {"content": {"sms": {"text": half}}, "locales": {"fr": {"sms": {"text": half}}}}
    assert "locales" in error_fields(await put(client, tenant, "huge", body))
    fits = "z" * (MAX_SOURCE_BYTES - 100)
    assert (await put(client, tenant, "huge", sms_template(fits))).status_code == 201


async def test_delete_removes_every_version_and_blocks_sending(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    owner = await make_tenant(session, "Deleter")
    await put(client, owner, "gone", sms_template("one"))
    await put(client, owner, "gone", sms_template("two"))
    await put(client, owner, "kept", sms_template("kept"))

    response = await client.delete("/v1/templates/gone", headers=owner.headers)
    assert response.status_code == 200
    assert response.json() == {
        "object": "template",
        "key": "gone",
        "deleted": True,
        "versions_deleted": 2,
    }
    for path in (
        "/v1/templates/gone",
        "/v1/templates/gone?version=1",
        "/v1/templates/gone/versions",
    ):
        assert_problem(await client.get(path, headers=owner.headers), 404, "not_found")
    preview = await client.post("/v1/templates/gone/preview", headers=owner.headers, json={})
    assert_problem(preview, 404, "not_found")
    again = await client.delete("/v1/templates/gone", headers=owner.headers)
    assert_problem(again, 404, "not_found")
    assert (
        await get_template(session, tenant_id=owner.tenant_id, mode=owner.mode, key="gone") is None
    )
    assert (
        await get_template(
            session, tenant_id=owner.tenant_id, mode=owner.mode, key="gone", version=1
        )
        is None
    )
    listed = (await client.get("/v1/templates", headers=owner.headers)).json()
    assert [t["key"] for t in listed["data"]] == ["kept"]

    # Saving the key again starts a new life; version numbers are never reused.
    reborn = await put(client, owner, "gone", sms_template("three"))
    assert reborn.json()["version"] == 3
    versions = (await client.get("/v1/templates/gone/versions", headers=owner.headers)).json()
    assert [v["version"] for v in versions["data"]] == [3]
    deleted = await session.scalar(
        select(AuditEntry.details).where(
            AuditEntry.tenant_id == owner.tenant_id, AuditEntry.action == "template.deleted"
        )
    )
    assert deleted == {"versions": 2, "latest_version": 2, "mode": "live"}


async def test_list_shows_latest_versions_and_paginates(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    owner = await make_tenant(session, "Lister")
    for key in ("a", "b", "c", "d", "e"):
        await put(client, owner, key, sms_template(key))
    await put(client, owner, "b", sms_template("b2"))  # now the most recently saved
    seen: list[tuple[str, int]] = []
    cursor: str | None = None
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/v1/templates", headers=owner.headers, params=params)).json()
        assert page["object"] == "list"
        seen += [(t["key"], t["version"]) for t in page["data"]]
        if not page["has_more"]:
            break
        cursor = page["next_cursor"]
    assert seen == [("b", 2), ("e", 1), ("d", 1), ("c", 1), ("a", 1)]

    for n in range(3):
        await put(client, owner, "many", sms_template(f"v{n}"))
    first = (
        await client.get("/v1/templates/many/versions", headers=owner.headers, params={"limit": 2})
    ).json()
    assert [v["version"] for v in first["data"]] == [3, 2] and first["next_cursor"] == "2"
    rest = (
        await client.get(
            "/v1/templates/many/versions",
            headers=owner.headers,
            params={"limit": 2, "cursor": first["next_cursor"]},
        )
    ).json()
    assert [v["version"] for v in rest["data"]] == [1] and not rest["has_more"]


async def test_scopes(client: httpx.AsyncClient, session: AsyncSession) -> None:
    owner = await make_tenant(session, "Scoped")
    await put(client, owner, "scoped", sms_template("x"))
    reader = await make_tenant(session, "Reader", scopes=["read"])
    reader_key = (
        await client.post(
            "/v1/api-keys", headers=owner.headers, json={"name": "r", "scopes": ["read"]}
        )
    ).json()["secret"]
    sender_key = (
        await client.post(
            "/v1/api-keys", headers=owner.headers, json={"name": "s", "scopes": ["send"]}
        )
    ).json()["secret"]
    read_only = {"Authorization": f"Bearer {reader_key}"}
    send_only = {"Authorization": f"Bearer {sender_key}"}

    assert (await client.get("/v1/templates/scoped", headers=read_only)).status_code == 200
    preview = await client.post("/v1/templates/scoped/preview", headers=read_only, json={})
    assert preview.status_code == 200
    for response in (
        await client.put("/v1/templates/scoped", headers=read_only, json=sms_template("y")),
        await client.delete("/v1/templates/scoped", headers=read_only),
        await client.put("/v1/templates/other", headers=reader.headers | read_only, json={}),
    ):
        assert assert_problem(response, 403, "insufficient_scope")["required_scope"] == "manage"
    for response in (
        await client.get("/v1/templates", headers=send_only),
        await client.get("/v1/templates/scoped", headers=send_only),
        await client.get("/v1/templates/scoped/versions", headers=send_only),
        await client.post("/v1/templates/scoped/preview", headers=send_only, json={}),
    ):
        assert assert_problem(response, 403, "insufficient_scope")["required_scope"] == "read"


async def test_tenants_cannot_see_or_touch_each_others_templates(
    client: httpx.AsyncClient, tenant: TenantKey, other_tenant: TenantKey
) -> None:
    await put(client, other_tenant, "secret", sms_template("B's {{ code }}"))
    await put(client, other_tenant, "shared-key", sms_template("B"))
    mine = await put(client, tenant, "shared-key", sms_template("A"))
    assert mine.json()["version"] == 1  # versions are counted per tenant

    listed = (await client.get("/v1/templates", headers=tenant.headers)).json()
    assert "secret" not in {t["key"] for t in listed["data"]}
    assert {t["id"] for t in listed["data"]}.isdisjoint(
        {
            t["id"]
            for t in (await client.get("/v1/templates", headers=other_tenant.headers)).json()[
                "data"
            ]
        }
    )
    for request in (
        client.get("/v1/templates/secret", headers=tenant.headers),
        client.get("/v1/templates/secret?version=1", headers=tenant.headers),
        client.get("/v1/templates/secret/versions", headers=tenant.headers),
        client.post("/v1/templates/secret/preview", headers=tenant.headers, json={}),
        client.delete("/v1/templates/secret", headers=tenant.headers),
    ):
        assert_problem(await request, 404, "not_found")

    # A's save and delete of the shared key leave B's template alone.
    await put(client, tenant, "shared-key", sms_template("A2"))
    await client.delete("/v1/templates/shared-key", headers=tenant.headers)
    theirs = (await client.get("/v1/templates/shared-key", headers=other_tenant.headers)).json()
    assert (theirs["version"], theirs["content"]["sms"]["text"]) == (1, "B")
    still = (await client.get("/v1/templates/secret", headers=other_tenant.headers)).json()
    assert still["content"]["sms"]["text"] == "B's {{ code }}"
