"""The dashboard's first room, driven over HTTP: accounts, sessions, CSRF, API keys and RBAC.

Everything runs against the real app, PostgreSQL and Redis; the client keeps cookies like a
browser, and htmx requests are imitated with the HX-Request and x-csrftoken headers.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid

import httpx
import pytest
from argon2 import PasswordHasher
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.models import AuditEntry
from app.auth import accounts, keys, roles
from app.auth.models import Membership, User
from app.settings import Settings
from tests.dashboard import (
    PASSWORD,
    ROW_ID,
    SECRET,
    create_key,
    csrf_token,
    htmx_headers,
    post_form,
    sign_in,
    sign_up,
    unique_email,
)
from tests.support import TenantKey


async def wait_for_status(
    client: httpx.AsyncClient, secret: str, status: int, within: float
) -> httpx.Response:
    """GET /v1/tenant with the key until it answers `status` (the key cache delays revocation)."""
    deadline = time.monotonic() + within
    while True:
        response = await client.get("/v1/tenant", headers={"Authorization": f"Bearer {secret}"})
        if response.status_code == status or time.monotonic() > deadline:
            return response
        await asyncio.sleep(0.1)


async def add_member(session: AsyncSession, tenant_id: uuid.UUID, role: str, email: str) -> None:
    user = User(
        email=email, name=f"{role.title()} Example", password_hash=PasswordHasher().hash(PASSWORD)
    )
    session.add(user)
    await session.flush()
    session.add(Membership(user_id=user.id, tenant_id=tenant_id, role=role))
    await session.commit()


async def test_sign_up_creates_tenant_and_owner_and_lands_on_overview(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    email = unique_email()
    response = await sign_up(client, email, company="Initech")
    assert response.status_code == 303
    assert response.headers["location"] == "/overview"
    session_cookie = next(
        header
        for header in response.headers.get_list("set-cookie")
        if header.startswith("herald_session=")
    ).lower()
    assert "httponly" in session_cookie
    assert "samesite=lax" in session_cookie

    page = await client.get("/keys")
    assert page.status_code == 200
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert "Initech" in page.text
    assert "Create key" in page.text

    user = await session.scalar(select(User).where(User.email == email))
    assert user is not None
    memberships = await accounts.tenants_of(session, user_id=user.id)
    assert [(m.tenant.name, m.role) for m in memberships] == [("Initech", "owner")]


async def test_sign_up_shows_field_errors_next_to_the_field(client: httpx.AsyncClient) -> None:
    response = await sign_up(client, unique_email(), password="short")
    assert response.status_code == 422
    error = re.search(
        r'id="field-password".*?<p class="field-error"[^>]*>([^<]*)</p>', response.text, re.S
    )
    assert error and "at least 10 characters" in error.group(1)
    assert (await client.get("/keys")).status_code == 303, "no session after a failed sign-up"


async def test_an_email_too_long_to_name_its_user_is_refused(client: httpx.AsyncClient) -> None:
    """A valid address of up to 254 characters; its user acts as `user:<e-mail>`, kept in
    200-character columns, so 195 is the most."""
    domain = "b" * 63 + "." + "c" * 63 + "." + "d" * 50 + ".example"
    response = await sign_up(client, f"{'a' * 64}@{domain}")
    assert response.status_code == 422
    error = re.search(
        r'id="field-email".*?<p class="field-error"[^>]*>([^<]*)</p>', response.text, re.S
    )
    assert error and "At most 195 characters" in error.group(1)
    longest = f"{'a' * (195 - len(domain) - 1)}@{domain}"
    assert (await sign_up(client, longest)).status_code == 303
    created = await create_key(client)
    assert created.response.status_code == 201


async def test_nul_in_a_form_field_is_refused_naming_it(client: httpx.AsyncClient) -> None:
    """PostgreSQL cannot store NUL: the page says which field held it, not "went wrong"."""
    response = await sign_up(client, unique_email(), company="Acme\x00")
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("text/html")
    assert "company: must not contain the NUL character" in response.text
    refused = await sign_in(client, "ann\x00@acme.example", PASSWORD)
    assert refused.status_code == 422 and "email: must not" in refused.text
    assert (await client.get("/keys")).status_code == 303, "no session"

    await sign_up(client, unique_email())
    response = await client.post(
        "/keys",
        data={"name": "Back\x00end", "mode": "live", "scopes": "send"},
        headers=htmx_headers(await csrf_token(client)),
    )
    assert response.status_code == 422 and "name: must not" in response.text


async def test_unauthenticated_keys_page_redirects_to_sign_in(client: httpx.AsyncClient) -> None:
    response = await client.get("/keys")
    assert response.status_code == 303
    assert response.headers["location"] == "/signin"
    assert (await client.get("/")).headers["location"] == "/signin"


async def test_sign_in_with_wrong_password_fails(client: httpx.AsyncClient) -> None:
    email = unique_email()
    await sign_up(client, email)
    await post_form(client, "/signout", {})
    assert (await client.get("/keys")).status_code == 303, "signed out"

    refused = await sign_in(client, email, "not the password")
    assert refused.status_code == 400
    assert "The e-mail or password is wrong." in refused.text
    assert (await client.get("/keys")).status_code == 303, "still signed out"

    accepted = await sign_in(client, email.upper(), PASSWORD)
    assert accepted.status_code == 303
    assert (await client.get("/keys")).status_code == 200


async def test_post_without_csrf_token_is_refused(client: httpx.AsyncClient) -> None:
    email = unique_email()
    await csrf_token(client)
    no_token = await client.post("/signin", data={"email": email, "password": PASSWORD})
    assert no_token.status_code == 403
    assert "This form has expired" in no_token.text

    await sign_up(client, email)
    forged = await client.post(
        "/keys",
        data={"name": "x", "mode": "live", "scopes": "send"},
        headers={"HX-Request": "true"},
    )
    assert forged.status_code == 403
    wrong = await client.post(
        "/keys", data={"name": "x", "mode": "live", "scopes": "send", "_csrf_token": "0" * 128}
    )
    assert wrong.status_code == 403
    assert ROW_ID.search((await client.get("/keys")).text) is None, "no key was created"


async def test_created_key_is_shown_once_authenticates_and_revocation_takes_effect(
    client: httpx.AsyncClient, session: AsyncSession, settings: Settings
) -> None:
    email = unique_email()
    await sign_up(client, email, company="Umbrella")
    created = await create_key(client, name="Billing service")
    assert "Billing service" in created.response.text
    assert "no-store" in created.response.headers["cache-control"]

    page = await client.get("/keys")
    assert created.secret not in page.text, "the secret is shown once only"
    assert created.secret[: keys.PREFIX_LENGTH] in page.text
    assert f'id="key-{created.key_id}"' in page.text

    api = await client.get("/v1/tenant", headers={"Authorization": f"Bearer {created.secret}"})
    assert api.status_code == 200, api.text
    assert api.json()["name"] == "Umbrella"
    assert api.json()["api_key"]["scopes"] == ["read", "send"]

    revoked = await client.post(
        f"/keys/{created.key_id}/revoke", headers=htmx_headers(await csrf_token(client))
    )
    assert revoked.status_code == 200
    assert "Revoked" in revoked.text
    assert ">Revoke</button>" not in revoked.text

    after = await wait_for_status(client, created.secret, 401, settings.api_key_cache_seconds + 2)
    assert after.status_code == 401, after.text

    actions = (
        await session.execute(
            select(AuditEntry.action, AuditEntry.actor).where(
                AuditEntry.target == str(created.key_id)
            )
        )
    ).all()
    assert sorted(actions) == [
        ("api_key.created", f"user:{email}"),
        ("api_key.revoked", f"user:{email}"),
    ]


async def test_key_form_errors_come_back_with_the_form(client: httpx.AsyncClient) -> None:
    await sign_up(client, unique_email())
    response = await client.post(
        "/keys",
        data={"name": " ", "mode": "prod"},
        headers=htmx_headers(await csrf_token(client)),
    )
    assert response.status_code == 422
    assert 'id="key-create"' in response.text
    assert response.text.count('class="field-error"') == 3
    assert "hk_" not in SECRET.sub("", response.text).replace("hk_live_…", "")


async def test_viewer_sees_keys_but_cannot_create_or_revoke(
    client: httpx.AsyncClient, session: AsyncSession, tenant: TenantKey
) -> None:
    email = unique_email("vic")
    await add_member(session, tenant.tenant_id, "viewer", email)
    assert (await sign_in(client, email, PASSWORD)).status_code == 303

    page = await client.get("/keys")
    assert page.status_code == 200
    assert f'id="key-{tenant.key_id}"' in page.text
    assert "Create key" not in page.text
    assert ">Revoke</button>" not in page.text

    token = await csrf_token(client)
    create = await client.post(
        "/keys",
        data={"name": "sneaky", "mode": "live", "scopes": "manage"},
        headers=htmx_headers(token),
    )
    assert create.status_code == 403
    revoke = await client.post(f"/keys/{tenant.key_id}/revoke", headers=htmx_headers(token))
    assert revoke.status_code == 403

    listed = await keys.list_keys(session, tenant_id=tenant.tenant_id)
    assert [key.name for key in listed.items] == ["test key"]
    assert listed.items[0].revoked_at is None
    api = await client.get("/v1/tenant", headers=tenant.headers)
    assert api.status_code == 200


async def test_the_key_service_refuses_a_role_that_may_not_manage_keys(
    session: AsyncSession, tenant: TenantKey
) -> None:
    """The rule is the service's, not only the pages': a viewer's role is refused before
    anything is written, and every other role may issue and revoke."""
    with pytest.raises(roles.RoleNotAllowed) as refused:
        await keys.issue_key(
            session,
            tenant_id=tenant.tenant_id,
            name="sneaky",
            mode="test",
            scopes=["manage"],
            actor="user:vic@example.com",
            role="viewer",
        )
    assert refused.value.role == "viewer"
    with pytest.raises(roles.RoleNotAllowed):
        await keys.revoke_key(
            session,
            tenant_id=tenant.tenant_id,
            key_id=tenant.key_id,
            actor="user:vic@example.com",
            role="viewer",
        )
    await session.commit()
    listed = await keys.list_keys(session, tenant_id=tenant.tenant_id)
    assert [(key.name, key.revoked_at) for key in listed.items] == [("test key", None)]
    written = await session.scalars(
        select(AuditEntry.action).where(
            AuditEntry.tenant_id == tenant.tenant_id, AuditEntry.actor == "user:vic@example.com"
        )
    )
    assert list(written) == []

    for role in sorted(roles.KEY_MANAGERS):
        issued = await keys.issue_key(
            session,
            tenant_id=tenant.tenant_id,
            name=f"by {role}",
            mode="test",
            scopes=["send"],
            actor=f"user:{role}@example.com",
            role=role,
        )
        revoked = await keys.revoke_key(
            session,
            tenant_id=tenant.tenant_id,
            key_id=issued.key.id,
            actor=f"user:{role}@example.com",
            role=role,
        )
        assert revoked is not None and revoked.revoked_at is not None
    await session.commit()


async def test_a_viewers_revoke_is_refused_by_the_service(
    client: httpx.AsyncClient, session: AsyncSession, tenant: TenantKey
) -> None:
    """The revoke route holds no role check of its own: the 403 is the key service's."""
    email = unique_email("val")
    await add_member(session, tenant.tenant_id, "viewer", email)
    assert (await sign_in(client, email, PASSWORD)).status_code == 303
    for answer in (
        await client.post(
            f"/keys/{tenant.key_id}/revoke", headers=htmx_headers(await csrf_token(client))
        ),
        await post_form(client, f"/keys/{tenant.key_id}/revoke", {}),
    ):
        assert answer.status_code == 403
        assert "(viewer) can see API keys but not create or revoke them" in answer.text
    [key] = (await keys.list_keys(session, tenant_id=tenant.tenant_id)).items
    assert key.revoked_at is None
    assert (await client.get("/v1/tenant", headers=tenant.headers)).status_code == 200


async def test_a_tenant_cannot_revoke_another_tenants_key(
    client: httpx.AsyncClient, session: AsyncSession, tenant: TenantKey
) -> None:
    await sign_up(client, unique_email("mallory"), company="Globex")
    response = await client.post(
        f"/keys/{tenant.key_id}/revoke", headers=htmx_headers(await csrf_token(client))
    )
    assert response.status_code in (403, 404)
    plain = await post_form(client, f"/keys/{tenant.key_id}/revoke", {})
    assert plain.status_code in (403, 404)

    page = await client.get("/keys")
    assert str(tenant.key_id) not in page.text

    session.expire_all()
    key = await keys.get_key(session, tenant_id=tenant.tenant_id, key_id=tenant.key_id)
    assert key is not None and key.revoked_at is None
    assert (await client.get("/v1/tenant", headers=tenant.headers)).status_code == 200
