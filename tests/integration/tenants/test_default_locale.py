"""The tenant's default locale: stored normalised, validated, served, audited; and used at
send time after the notification's and the recipient's locale, before a template's own
content, with one render per channel and content used."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit import service as audit
from app.audit.models import AuditEntry
from app.notifications.models import Render
from app.runtime import ServiceUrls
from tests.send_path import drain, notify, put_recipient, put_template, workers
from tests.support import TenantKey, assert_problem, live_key, make_tenant, settings_for

PATH = "/v1/tenant/default-locale"


async def put_locale(client: httpx.AsyncClient, tenant: TenantKey, body: Any) -> httpx.Response:
    return await client.put(PATH, headers=tenant.headers, json=body)


async def test_set_read_and_clear(client: httpx.AsyncClient, tenant: TenantKey) -> None:
    assert (await client.get(PATH, headers=tenant.headers)).json() == {
        "object": "default_locale",
        "default_locale": None,
    }
    assert (await client.get("/v1/tenant", headers=tenant.headers)).json()["default_locale"] is None

    response = await put_locale(client, tenant, {"default_locale": "fr_ca"})
    assert response.status_code == 200, response.text
    assert response.json() == {"object": "default_locale", "default_locale": "fr-CA"}
    assert (await client.get(PATH, headers=tenant.headers)).json()["default_locale"] == "fr-CA"
    who = (await client.get("/v1/tenant", headers=tenant.headers)).json()
    assert who["default_locale"] == "fr-CA"

    cleared = await put_locale(client, tenant, {"default_locale": None})
    assert cleared.json() == {"object": "default_locale", "default_locale": None}
    assert (await client.get("/v1/tenant", headers=tenant.headers)).json()["default_locale"] is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"default_locale": "!!"}, "default_locale"),
        ({"default_locale": "english"}, "default_locale"),
        ({"default_locale": ""}, "default_locale"),
        ({"default_locale": "x" * 36}, "default_locale"),
        ({"default_locale": 7}, "default_locale"),
        ({}, "default_locale"),
        ({"default_locale": "en", "region": "GB"}, "region"),
    ],
)
async def test_bad_input_names_the_field(
    client: httpx.AsyncClient, tenant: TenantKey, body: dict[str, Any], field: str
) -> None:
    problem = assert_problem(await put_locale(client, tenant, body), 422, "validation_error")
    assert [e["field"] for e in problem["errors"]] == [field]  # type: ignore[attr-defined]
    assert (await client.get(PATH, headers=tenant.headers)).json()["default_locale"] is None


async def test_changes_are_audited(
    client: httpx.AsyncClient, tenant: TenantKey, session: AsyncSession
) -> None:
    await put_locale(client, tenant, {"default_locale": "de"})
    await put_locale(client, tenant, {"default_locale": "pt-br"})
    await put_locale(client, tenant, {"default_locale": None})
    entries = (
        await session.scalars(
            select(AuditEntry)
            .where(
                AuditEntry.tenant_id == tenant.tenant_id,
                AuditEntry.action == "tenant.default_locale",
            )
            .order_by(AuditEntry.seq)
        )
    ).all()
    assert [e.details for e in entries] == [
        {"default_locale": "de", "previous": None},
        {"default_locale": "pt-BR", "previous": "de"},
        {"default_locale": None, "previous": "pt-BR"},
    ]
    assert {e.target for e in entries} == {str(tenant.tenant_id)}
    assert all(e.actor.startswith("api_key:") for e in entries)
    assert await audit.verify(session, tenant_id=tenant.tenant_id) == []


async def test_scopes_and_isolation(client: httpx.AsyncClient, session: AsyncSession) -> None:
    reader = await make_tenant(session, "Reader", scopes=["read"])
    sender = await make_tenant(session, "Sender", scopes=["send"])
    manager = await make_tenant(session, "Manager")
    assert (await client.get(PATH, headers=reader.headers)).status_code == 200
    denied = await put_locale(client, reader, {"default_locale": "fr"})
    assert_problem(denied, 403, "insufficient_scope")
    assert_problem(await client.get(PATH, headers=sender.headers), 403, "insufficient_scope")
    assert (await put_locale(client, manager, {"default_locale": "fr"})).status_code == 200
    assert (await client.get(PATH, headers=reader.headers)).json()["default_locale"] is None


GREETING = {"inbox": {"title": "Hello", "body": "Welcome"}}
GREETING_LOCALES = {
    "fr": {"inbox": {"title": "Bonjour", "body": "Bienvenue"}},
    "de": {"inbox": {"title": "Hallo", "body": "Willkommen"}},
}


async def inbox_titles(
    client: httpx.AsyncClient, tenant: TenantKey, people: list[str]
) -> dict[str, list[str]]:
    titles = {}
    for person in people:
        inbox = await client.get(f"/v1/recipients/{person}/inbox", headers=tenant.headers)
        titles[person] = [item["title"] for item in inbox.json()["data"]]
    return titles


async def renders_of(session: AsyncSession, notification_id: str) -> int:
    count = await session.scalar(
        select(func.count()).select_from(Render).where(Render.notification_id == notification_id)
    )
    return int(count or 0)


async def test_sends_fall_back_to_the_tenant_default_locale(
    client: httpx.AsyncClient, session: AsyncSession, service_urls: ServiceUrls
) -> None:
    sandbox = await make_tenant(session, "Locales", mode="test")
    await put_template(client, sandbox, "greeting", GREETING, locales=GREETING_LOCALES)
    people = {"amelie": "fr-CA", "chloe": "fr-FR", "diego": "es", "noname": None}
    for person, locale in people.items():
        await put_recipient(client, sandbox, person, locale=locale)
    settings = settings_for(service_urls.database_url, service_urls.redis_url)

    # No default: the template's own content for those whose language it lacks.
    await notify(client, sandbox, template="greeting", to=list(people))
    async with workers(settings) as ctx:
        await drain(ctx, service_urls.redis_url)
    assert await inbox_titles(client, sandbox, list(people)) == {
        "amelie": ["Bonjour"],
        "chloe": ["Bonjour"],
        "diego": ["Hello"],
        "noname": ["Hello"],
    }

    # de-AT: the template has no de-AT but has its language, de.
    admin = await live_key(session, sandbox)  # the default locale is a live setting
    assert (await put_locale(client, admin, {"default_locale": "de-AT"})).status_code == 200
    accepted = await notify(client, sandbox, template="greeting", to=list(people))
    async with workers(settings) as ctx:
        await drain(ctx, service_urls.redis_url)
    latest = {
        p: titles[0] for p, titles in (await inbox_titles(client, sandbox, list(people))).items()
    }
    assert latest == {"amelie": "Bonjour", "chloe": "Bonjour", "diego": "Hallo", "noname": "Hallo"}
    # One render per content used (fr, de), not per recipient locale.
    assert await renders_of(session, accepted["id"]) == 2

    # The notification's own locale comes first; a language the template lacks falls back
    # to the recipient's, then to the tenant's default.
    await put_recipient(client, sandbox, "emil", locale="de")
    await put_recipient(client, sandbox, "fanny", locale="fr")
    await put_recipient(client, sandbox, "gina", locale="it")
    await notify(client, sandbox, template="greeting", to=["emil"], locale="fr-BE")
    await notify(client, sandbox, template="greeting", to=["fanny", "gina"], locale="nl")
    async with workers(settings) as ctx:
        await drain(ctx, service_urls.redis_url)
    assert await inbox_titles(client, sandbox, ["emil", "fanny", "gina"]) == {
        "emil": ["Bonjour"],
        "fanny": ["Bonjour"],
        "gina": ["Hallo"],
    }


async def test_preview_falls_back_to_the_tenant_default_locale(
    client: httpx.AsyncClient, tenant: TenantKey
) -> None:
    await put_template(client, tenant, "greeting", GREETING, locales=GREETING_LOCALES)
    await put_locale(client, tenant, {"default_locale": "de"})
    path = "/v1/templates/greeting/preview"
    for asked, locale, title in (
        ("it", "de", "Hallo"),
        ("fr-CA", "fr", "Bonjour"),
        (None, "de", "Hallo"),
    ):
        body = {"locale": asked} if asked else {}
        inbox = (await client.post(path, headers=tenant.headers, json=body)).json()["channels"][
            "inbox"
        ]
        assert (inbox["locale"], inbox["content"]["title"]) == (locale, title)
