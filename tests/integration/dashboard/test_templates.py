"""The templates pages, driven over HTTP as a browser does: list, create, edit with a live
preview rendered in the render pool, save versions, compare them, send a test to oneself;
and the rules around them: roles, CSRF, tenant and mode isolation, bounded input."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import httpx
import pytest
from argon2 import PasswordHasher
from litestar import Litestar
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.models import AuditEntry
from app.auth import roles
from app.auth.models import Membership, User
from app.notifications.models import Notification
from app.notifications.self_test import member_recipient_id
from app.templates import rendering, service
from tests.dashboard import (
    PASSWORD,
    browser,
    csrf_token,
    htmx_headers,
    post_form,
    sign_in,
    unique_email,
)
from tests.support import TenantKey, key_of, make_tenant

WELCOME = {
    "name": "Welcome",
    "content": {
        "email": {"subject": "Hi {{ name }}", "text": "Welcome, {{ name }}!"},
        "sms": {"text": "Hi {{ name }}"},
    },
    "locales": {"fr": {"sms": {"text": "Salut {{ name }}"}}},
}


async def add_member(
    session: AsyncSession, tenant_id: uuid.UUID, role: str
) -> tuple[str, uuid.UUID]:
    email = unique_email(role)
    user = User(
        email=email, name=f"{role.title()} Example", password_hash=PasswordHasher().hash(PASSWORD)
    )
    session.add(user)
    await session.flush()
    session.add(Membership(user_id=user.id, tenant_id=tenant_id, role=role))
    await session.commit()
    return email, user.id


async def signed_in(
    client: httpx.AsyncClient, session: AsyncSession, tenant: TenantKey, role: str = "developer"
) -> uuid.UUID:
    """Sign a new member of `role` in to `tenant`, looking at the data of the key's mode."""
    email, user_id = await add_member(session, tenant.tenant_id, role)
    assert (await sign_in(client, email, PASSWORD)).status_code == 303
    switched = await post_form(client, "/mode", {"mode": tenant.mode})
    assert switched.status_code == 303
    return user_id


async def put_template(
    client: httpx.AsyncClient, tenant: TenantKey, key: str, body: dict[str, Any]
) -> None:
    response = await client.put(f"/v1/templates/{key}", json=body, headers=tenant.headers)
    assert response.status_code == 201, response.text


def editor_fields(**overrides: str) -> dict[str, Any]:
    """The editor form as the WELCOME template shows it, with `overrides` (field: value)."""
    fields: dict[str, Any] = {
        "name": "Welcome",
        "category": "",
        "default_locale": "en",
        "locale": ["fr"],
        "channels.content": ["email", "sms"],
        "channels.locales.fr": ["sms"],
        "content.email.subject": "Hi {{ name }}",
        "content.email.html": "",
        "content.email.text": "Welcome, {{ name }}!",
        "content.sms.text": "Hi {{ name }}",
        "locales.fr.sms.text": "Salut {{ name }}",
        "data": '{"name": "Ada"}',
        "recipient": "",
        "preview_channel": "email",
        "preview_locale": "",
    }
    fields.update(overrides)
    return fields


async def htmx_post(client: httpx.AsyncClient, path: str, fields: dict[str, Any]) -> httpx.Response:
    token = await csrf_token(client, "/templates")
    return await client.post(path, data=fields, headers=htmx_headers(token))


async def test_the_list_shows_each_template_and_an_empty_state(
    client: httpx.AsyncClient, session: AsyncSession, tenant: TenantKey
) -> None:
    await signed_in(client, session, tenant)
    empty = await client.get("/templates")
    assert empty.status_code == 200
    assert 'id="templates-empty"' in empty.text
    assert "New template" in empty.text

    await put_template(client, tenant, "welcome", WELCOME)
    await put_template(client, tenant, "welcome", {**WELCOME, "name": "Welcome again"})
    listed = await client.get("/templates")
    assert 'id="templates-empty"' not in listed.text
    row = re.search(r'<tr id="template-welcome">(.*?)</tr>', listed.text, re.S)
    assert row, listed.text
    assert "Welcome again" in row.group(1)
    assert ">v2<" in row.group(1)
    assert "Email" in row.group(1) and "SMS" in row.group(1)
    assert "en, fr" in row.group(1)


async def test_a_new_template_starts_from_content_that_renders(
    client: httpx.AsyncClient, session: AsyncSession, tenant: TenantKey
) -> None:
    await signed_in(client, session, tenant)
    created = await post_form(
        client, "/templates", {"key": "order.shipped", "name": "Order shipped", "channels": "sms"}
    )
    assert created.status_code == 303
    assert created.headers["location"] == "/templates/order.shipped"
    saved = await service.get_template(
        session, tenant_id=tenant.tenant_id, mode=tenant.mode, key="order.shipped"
    )
    assert saved is not None and saved.version == 1 and saved.channels == ["sms"]
    assert saved.created_by.startswith("user:")

    editor = await client.get("/templates/order.shipped")
    assert editor.status_code == 200
    assert 'hx-post="/templates/order.shipped/preview"' in editor.text
    assert 'hx-trigger="load, input changed delay:400ms"' in editor.text

    again = await post_form(client, "/templates", {"key": "order.shipped", "channels": "sms"})
    assert again.status_code == 422
    assert "already a template" in again.text
    bad = await client.post(
        "/templates",
        data={"key": "Not A Key!", "channels": "email"},
        headers=htmx_headers(await csrf_token(client, "/templates")),
    )
    assert bad.status_code == 422
    assert 'id="error-new-key"' in bad.text
    none = await post_form(client, "/templates", {"key": "nothing"})
    assert none.status_code == 422 and "Choose at least one channel" in none.text


async def test_the_preview_renders_the_form_not_the_saved_version(
    client: httpx.AsyncClient,
    session: AsyncSession,
    tenant: TenantKey,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def not_here(*args: object, **kwargs: object) -> None:
        raise AssertionError("a tenant template was rendered in the dashboard's process")

    # The render pool's processes have their own copy of the module; this one must not run.
    monkeypatch.setattr(rendering, "render", not_here)
    monkeypatch.setattr(rendering, "source_errors", not_here)
    await signed_in(client, session, tenant)
    await put_template(client, tenant, "welcome", WELCOME)
    preview = await htmx_post(
        client,
        "/templates/welcome/preview",
        editor_fields(**{"content.email.subject": "Hello <b>{{ name }}</b>, unsaved"}),
    )
    assert preview.status_code == 200
    assert "Hello &lt;b&gt;Ada&lt;/b&gt;, unsaved" in preview.text, "escaped, rendered"
    assert "Welcome, Ada!" in preview.text

    sms = await htmx_post(
        client, "/templates/welcome/preview", editor_fields(preview_channel="sms")
    )
    assert "Hi Ada" in sms.text
    assert re.search(r'id="sms-segments">1<', sms.text)
    assert re.search(r'id="sms-encoding">GSM-7<', sms.text)
    long = await htmx_post(
        client,
        "/templates/welcome/preview",
        editor_fields(preview_channel="sms", **{"content.sms.text": "ü😀 " * 30}),
    )
    assert re.search(r'id="sms-encoding">UCS-2<', long.text)
    assert re.search(r'id="sms-segments">2<', long.text)

    french = await htmx_post(
        client,
        "/templates/welcome/preview",
        editor_fields(preview_channel="sms", preview_locale="fr"),
    )
    assert "Salut Ada" in french.text
    absent = await htmx_post(
        client, "/templates/welcome/preview", editor_fields(preview_channel="webhook")
    )
    assert 'id="preview-absent"' in absent.text and "No Webhook content" in absent.text
    fallback = await htmx_post(
        client,
        "/templates/welcome/preview",
        editor_fields(preview_channel="email", preview_locale="fr"),
    )
    assert "Welcome, Ada!" in fallback.text and "fr falls back to en" in fallback.text


async def test_an_emails_html_is_previewed_in_a_frame_of_its_own(
    app: Litestar, client: httpx.AsyncClient, session: AsyncSession, tenant: TenantKey
) -> None:
    """Its inline styles apply there, and nothing in it runs; only its tenant and mode load it."""
    await signed_in(client, session, tenant)
    await put_template(client, tenant, "welcome", WELCOME)
    html = '<p style="color: red">Hi <b>{{ name }}</b></p><script>alert(1)</script>'
    preview = await htmx_post(
        client, "/templates/welcome/preview", editor_fields(**{"content.email.html": html})
    )
    found = re.search(
        r'<iframe [^>]*sandbox="" src="(/templates/welcome/frame/[\w-]{24})"', preview.text
    )
    assert found, preview.text
    frame = await client.get(found.group(1))
    assert frame.status_code == 200
    assert frame.headers["content-type"].startswith("text/html")
    assert frame.text == '<p style="color: red">Hi <b>Ada</b></p><script>alert(1)</script>'
    policy = frame.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "sandbox" in policy and "script-src" not in policy
    assert "frame-ancestors 'self'" in policy and frame.headers["x-frame-options"] == "SAMEORIGIN"
    assert (await client.get("/templates/welcome/frame/" + "A" * 24)).status_code == 404
    assert (await client.get("/templates/welcome/frame/../../keys")).status_code in (404, 303)

    async with browser(app) as stranger:
        await signed_in(stranger, session, await make_tenant(session, "Stranger"))
        assert (await stranger.get(found.group(1))).status_code == 404
    assert (await post_form(client, "/mode", {"mode": "test"})).status_code == 303
    assert (await client.get(found.group(1))).status_code == 404, "the other mode's"


async def test_preview_errors_point_at_their_field_and_line(
    client: httpx.AsyncClient, session: AsyncSession, tenant: TenantKey
) -> None:
    await signed_in(client, session, tenant)
    await put_template(client, tenant, "welcome", WELCOME)
    syntax = await htmx_post(
        client,
        "/templates/welcome/preview",
        editor_fields(**{"content.email.text": "one\ntwo\n{% if %}\nfour"}),
    )
    assert syntax.status_code == 200
    assert 'data-error-field="content.email.text"' in syntax.text
    assert 'data-error-line="3"' in syntax.text
    marked = re.search(
        r'class="source-line is-error-line"><span class="line-no">3</span>([^<]*)', syntax.text
    )
    assert marked and marked.group(1).strip() == "{% if %}"

    undefined = await htmx_post(
        client,
        "/templates/welcome/preview",
        editor_fields(
            preview_channel="sms",
            preview_locale="fr",
            **{"locales.fr.sms.text": "Salut\n{{ missing.value }}"},
        ),
    )
    assert 'data-error-field="locales.fr.sms.text"' in undefined.text
    assert 'data-error-line="2"' in undefined.text
    assert "&#39;missing&#39; is undefined" in undefined.text

    data = await htmx_post(client, "/templates/welcome/preview", editor_fields(data="{nope"))
    assert 'data-error-field="data"' in data.text and "not valid JSON" in data.text
    shape = await htmx_post(client, "/templates/welcome/preview", editor_fields(data="[1, 2]"))
    assert "a JSON object is required" in shape.text
    too_big = await htmx_post(
        client, "/templates/welcome/preview", editor_fields(data='{"a": "' + "x" * 70_000 + '"}')
    )
    assert 'data-error-field="data"' in too_big.text and "at most 65536 bytes" in too_big.text


@pytest.mark.parametrize(
    "source",
    [
        "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
        "{{ 'x' * 1000000000 }}",
        "{% for i in range(10**9) %}{{ i }}{% endfor %}",
    ],
)
async def test_a_hostile_template_is_answered_as_an_error_quickly(
    client: httpx.AsyncClient, session: AsyncSession, tenant: TenantKey, source: str
) -> None:
    """The render runs in the pool, bounded in time, output and memory: the page answers
    with an error in about the render limit, not after the loop ends."""
    await signed_in(client, session, tenant)
    await put_template(client, tenant, "welcome", WELCOME)
    began = time.monotonic()
    preview = await htmx_post(
        client,
        "/templates/welcome/preview",
        editor_fields(preview_channel="sms", **{"content.sms.text": source}),
    )
    assert time.monotonic() - began < 5
    assert preview.status_code == 200
    assert 'id="preview-errors"' in preview.text
    assert 'data-error-field="content.sms' in preview.text
    message = re.search(r'class="source-error-message">([^<]*)<', preview.text)
    assert message and re.search(r"limit|larger|stopped|time|may build", message.group(1)), message


async def test_save_makes_a_new_version_and_versions_compare(
    client: httpx.AsyncClient, session: AsyncSession, tenant: TenantKey
) -> None:
    await signed_in(client, session, tenant)
    await put_template(client, tenant, "welcome", WELCOME)
    saved = await htmx_post(
        client,
        "/templates/welcome",
        editor_fields(**{"content.email.subject": "<script>alert(1)</script> {{ name }}"}),
    )
    assert saved.status_code == 200, saved.text
    assert "Saved version 2" in saved.text
    latest = await service.get_template(
        session, tenant_id=tenant.tenant_id, mode=tenant.mode, key="welcome"
    )
    assert latest is not None and latest.version == 2
    assert latest.content["email"]["subject"] == "<script>alert(1)</script> {{ name }}"
    assert latest.locales == {"fr": {"sms": {"text": "Salut {{ name }}"}}}

    audited = await session.scalars(
        select(AuditEntry.actor).where(
            AuditEntry.tenant_id == tenant.tenant_id, AuditEntry.action == "template.saved"
        )
    )
    assert [actor for actor in audited if actor.startswith("user:")], "saved as the member"

    versions = await client.get("/templates/welcome/versions")
    assert versions.status_code == 200
    assert 'id="version-2"' in versions.text and 'id="version-1"' in versions.text

    split = await client.get("/templates/welcome/diff?from=1&to=2")
    assert split.status_code == 200
    assert "<script>alert" not in split.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt; {{ name }}" in split.text
    assert 'class="diff-row diff-replace"' in split.text
    assert " style=" not in split.text
    unified = await client.get("/templates/welcome/diff?from=1&to=2&view=unified")
    assert '<span class="diff-line diff-delete">-Hi {{ name }}' in unified.text
    assert '<span class="diff-line diff-insert">+&lt;script&gt;' in unified.text

    old = await client.get("/templates/welcome?version=1")
    assert old.status_code == 200 and "Viewing v1" in old.text
    for bad in (
        "/templates/welcome/diff?from=x&to=2",
        "/templates/welcome/diff?to=2",
        "/templates/welcome?version=-1",
    ):
        refused = await client.get(bad)
        assert refused.status_code == 422, bad
    assert (await client.get("/templates/welcome/diff?from=1&to=9")).status_code == 404


async def test_an_invalid_save_is_refused_naming_the_field(
    client: httpx.AsyncClient, session: AsyncSession, tenant: TenantKey
) -> None:
    await signed_in(client, session, tenant)
    await put_template(client, tenant, "welcome", WELCOME)
    broken = await htmx_post(
        client, "/templates/welcome", editor_fields(**{"content.sms.text": "fine\n{{ name "})
    )
    assert broken.status_code == 422
    assert 'data-error-field="content.sms.text"' in broken.text
    assert 'data-error-line="2"' in broken.text
    empty = await htmx_post(
        client, "/templates/welcome", editor_fields(**{"content.email.subject": ""})
    )
    assert empty.status_code == 422 and "content.email.subject" in empty.text
    category = await htmx_post(client, "/templates/welcome", editor_fields(category="nope"))
    assert category.status_code == 422 and "no category" in category.text
    json_body = await htmx_post(
        client,
        "/templates/welcome",
        editor_fields(
            **{"channels.content": ["email", "webhook"], "content.webhook.body": "{oops"}
        ),
    )
    assert (
        json_body.status_code == 422 and 'data-error-field="content.webhook.body"' in json_body.text
    )
    latest = await service.get_template(
        session, tenant_id=tenant.tenant_id, mode=tenant.mode, key="welcome"
    )
    assert latest is not None and latest.version == 1


async def test_the_editor_saves_without_javascript_too(
    client: httpx.AsyncClient, session: AsyncSession, tenant: TenantKey
) -> None:
    await signed_in(client, session, tenant)
    await put_template(client, tenant, "welcome", WELCOME)
    saved = await post_form(
        client, "/templates/welcome", editor_fields(**{"content.sms.text": "Plain form"})
    )
    assert saved.status_code == 303 and saved.headers["location"] == "/templates/welcome"
    refused = await post_form(
        client, "/templates/welcome", editor_fields(**{"content.sms.text": "{% endfor %}"})
    )
    assert refused.status_code == 422
    assert 'id="save-errors"' in refused.text and 'id="template-editor"' in refused.text
    assert "{% endfor %}" in refused.text, "the editor keeps what was sent"
    latest = await service.get_template(
        session, tenant_id=tenant.tenant_id, mode=tenant.mode, key="welcome"
    )
    assert latest is not None and latest.version == 2
    assert latest.content["sms"]["text"] == "Plain form"


async def test_locales_are_added_and_removed_in_the_form(
    client: httpx.AsyncClient, session: AsyncSession, tenant: TenantKey
) -> None:
    await signed_in(client, session, tenant)
    await put_template(client, tenant, "welcome", WELCOME)
    added = await htmx_post(client, "/templates/welcome/editor", editor_fields(add_locale="de-CH"))
    assert added.status_code == 200
    assert 'data-locale-tab="de-CH"' in added.text and 'name="locales.de-CH.sms.text"' in added.text
    removed = await htmx_post(
        client, "/templates/welcome/editor", editor_fields(remove_locale="fr")
    )
    assert 'data-locale-tab="fr"' not in removed.text
    bad = await htmx_post(
        client, "/templates/welcome/editor", editor_fields(add_locale="not a tag")
    )
    assert bad.status_code == 422
    unreadable = await htmx_post(
        client, "/templates/welcome/editor", editor_fields(locale=["fr", "no good"])
    )
    assert unreadable.status_code == 422 and unreadable.headers["HX-Retarget"] == "#save-status"
    assert 'data-error-field="locale"' in unreadable.text


async def test_send_a_test_to_me_goes_through_the_intake_in_the_members_mode(
    client: httpx.AsyncClient, session: AsyncSession, tenant: TenantKey
) -> None:
    test_key = await key_of(session, tenant, "test")
    user_id = await signed_in(client, session, test_key)
    await put_template(client, test_key, "welcome", WELCOME)
    sent = await htmx_post(client, "/templates/welcome/test", editor_fields(data='{"name": "Me"}'))
    assert sent.status_code == 202, sent.text
    found = re.search(r"Notification <code>([0-9a-f-]{36})</code>", sent.text)
    assert found and "delivered to the sandbox" in sent.text
    notification = await session.get(Notification, uuid.UUID(found.group(1)))
    assert notification is not None
    assert notification.tenant_id == tenant.tenant_id and notification.mode == "test"
    assert notification.channels == ["email"] and notification.api_key_id is None
    assert notification.audience == {"recipients": [member_recipient_id(user_id)]}
    assert notification.data == {"name": "Me"}

    again = await htmx_post(client, "/templates/welcome/test", editor_fields(data='{"name": "Me"}'))
    assert (
        again.status_code == 202 and "already sent" in again.text and found.group(1) in again.text
    )

    await put_template(client, test_key, "sms-only", {"content": {"sms": {"text": "Hi"}}})
    refused = await htmx_post(client, "/templates/sms-only/test", editor_fields())
    assert refused.status_code == 422 and "has no email content" in refused.text


async def test_a_viewer_reads_and_previews_but_cannot_change_or_send(
    client: httpx.AsyncClient, session: AsyncSession, tenant: TenantKey
) -> None:
    await signed_in(client, session, tenant, role="viewer")
    await put_template(client, tenant, "welcome", WELCOME)
    listed = await client.get("/templates")
    assert listed.status_code == 200 and "New template" not in listed.text
    editor = await client.get("/templates/welcome")
    assert editor.status_code == 200
    assert "Save new version" not in editor.text and "Send a test to me" not in editor.text
    preview = await htmx_post(client, "/templates/welcome/preview", editor_fields())
    assert preview.status_code == 200 and "Welcome, Ada!" in preview.text

    for path, fields in [
        ("/templates", {"key": "sneaky", "channels": "email"}),
        ("/templates/welcome", editor_fields(**{"content.email.subject": "changed"})),
        ("/templates/welcome/test", editor_fields()),
        ("/templates/welcome/delete", {}),
    ]:
        answer = await htmx_post(client, path, fields)
        assert answer.status_code == 403, path
        plain = await post_form(client, path, fields)
        assert plain.status_code == 403, path
    latest = await service.get_template(
        session, tenant_id=tenant.tenant_id, mode=tenant.mode, key="welcome"
    )
    assert latest is not None and latest.version == 1
    assert (
        await session.scalar(
            select(Notification.id).where(Notification.tenant_id == tenant.tenant_id)
        )
    ) is None


async def test_the_template_services_refuse_a_role_that_may_not_manage_templates(
    session: AsyncSession, tenant: TenantKey
) -> None:
    async def compiles(sources: dict[str, dict[str, Any]]) -> list[dict[str, str]]:
        return []

    with pytest.raises(roles.RoleNotAllowed):
        await service.save_template(
            session,
            tenant_id=tenant.tenant_id,
            mode="live",
            key="welcome",
            content={"sms": {"text": "Hi"}},
            actor="user:vic@example.com",
            compiles=compiles,
            role="viewer",
        )
    with pytest.raises(roles.RoleNotAllowed):
        await service.delete_template(
            session,
            tenant_id=tenant.tenant_id,
            mode="live",
            key="welcome",
            actor="user:v",
            role="viewer",
        )
    await session.rollback()
    saved = await service.save_template(
        session,
        tenant_id=tenant.tenant_id,
        mode="live",
        key="welcome",
        content={"sms": {"text": "Hi"}},
        actor="user:dev@example.com",
        compiles=compiles,
        role="developer",
    )
    assert saved.version == 1
    await session.rollback()


async def test_every_form_needs_its_csrf_token(
    client: httpx.AsyncClient, session: AsyncSession, tenant: TenantKey
) -> None:
    await signed_in(client, session, tenant)
    await put_template(client, tenant, "welcome", WELCOME)
    for path in (
        "/templates",
        "/templates/welcome",
        "/templates/welcome/preview",
        "/templates/welcome/editor",
        "/templates/welcome/test",
        "/templates/welcome/delete",
    ):
        answer = await client.post(path, data=editor_fields(), headers={"HX-Request": "true"})
        assert answer.status_code == 403, path
    latest = await service.get_template(
        session, tenant_id=tenant.tenant_id, mode=tenant.mode, key="welcome"
    )
    assert latest is not None and latest.version == 1


async def test_another_tenants_or_modes_templates_are_not_found(
    client: httpx.AsyncClient,
    session: AsyncSession,
    tenant: TenantKey,
    other_tenant: TenantKey,
) -> None:
    await signed_in(client, session, tenant)
    await put_template(
        client,
        other_tenant,
        "globex-secret",
        {"name": "Globex secret", **{"content": {"sms": {"text": "G"}}}},
    )
    test_key = await key_of(session, tenant, "test")
    await put_template(
        client, test_key, "test-only", {"name": "Test only", "content": {"sms": {"text": "T"}}}
    )

    listed = await client.get("/templates")
    assert "globex-secret" not in listed.text and "test-only" not in listed.text
    for key in ("globex-secret", "test-only"):
        for path in (
            f"/templates/{key}",
            f"/templates/{key}/versions",
            f"/templates/{key}/diff?from=1&to=1",
        ):
            assert (await client.get(path)).status_code == 404, path
        for path in (
            f"/templates/{key}",
            f"/templates/{key}/preview",
            f"/templates/{key}/test",
            f"/templates/{key}/editor",
            f"/templates/{key}/delete",
        ):
            answer = await htmx_post(client, path, editor_fields())
            assert answer.status_code == 404, path
    other = await service.get_template(
        session, tenant_id=other_tenant.tenant_id, mode="live", key="globex-secret"
    )
    assert other is not None and other.version == 1

    # The same member, switched to test data, sees the test template and not the live one.
    assert (await post_form(client, "/mode", {"mode": "test"})).status_code == 303
    tested = await client.get("/templates")
    assert "test-only" in tested.text
    await put_template(client, tenant, "live-only", {"content": {"sms": {"text": "L"}}})
    assert (await client.get("/templates/live-only")).status_code == 404


async def test_delete_removes_the_template(
    client: httpx.AsyncClient, session: AsyncSession, tenant: TenantKey
) -> None:
    await signed_in(client, session, tenant)
    await put_template(client, tenant, "welcome", WELCOME)
    deleted = await post_form(client, "/templates/welcome/delete", {})
    assert deleted.status_code == 303 and deleted.headers["location"] == "/templates"
    assert (await client.get("/templates/welcome")).status_code == 404
    assert (await post_form(client, "/templates/welcome/delete", {})).status_code == 404
