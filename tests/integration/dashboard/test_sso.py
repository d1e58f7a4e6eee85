"""Single sign-on, driven over HTTP as a browser does, against real OpenID providers on
127.0.0.1: Canaille (login, password and consent pages, PKCE required) for the whole flow,
and a provider whose ID tokens the test forges for what an honest provider never sends.

The app here allows private URLs (HERALD_ALLOW_PRIVATE_URLS), as an operator would for an
on-premise provider, so that http://127.0.0.1 issuers are accepted; with the default
settings they are refused (the last tests).
"""

from __future__ import annotations

import html
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from joserfc.jwk import RSAKey
from litestar import Litestar
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.models import AuditEntry
from app.auth import accounts, roles
from app.auth.models import Membership, User
from app.auth.sso import config as sso_config
from app.auth.sso import oidc
from app.auth.sso.models import SsoConfig
from app.crypto import keyring_for
from app.main import create_app
from app.runtime import ServiceUrls
from tests.dashboard import (
    PASSWORD,
    alert,
    browser,
    csrf_token,
    htmx_headers,
    post_form,
    sign_in,
    sign_up,
)
from tests.integration.dashboard.test_dashboard import add_member
from tests.oidc_provider import (
    TokenForge,
    canaille,
    new_key,
    s256,
    sign_in_at_provider,
    token_forge,
)
from tests.support import serving, settings_for

PUBLIC_URL = "http://herald.test"
CALLBACK = f"{PUBLIC_URL}/sso/callback"
SECRET = "s3cret-only-the-provider-and-herald-know"


@pytest.fixture(scope="module")
async def sso_app(service_urls: ServiceUrls) -> AsyncIterator[Litestar]:
    settings = settings_for(
        service_urls.database_url,
        service_urls.redis_url,
        HERALD_ALLOW_PRIVATE_URLS="true",
        HERALD_PUBLIC_URL=PUBLIC_URL,
    )
    async with serving(create_app(settings)) as application:
        yield application


@pytest.fixture
def forge() -> AsyncIterator[TokenForge]:
    with token_forge() as provider:
        yield provider


@dataclass
class Owner:
    client: httpx.AsyncClient
    email: str
    domain: str
    tenant_id: uuid.UUID
    company: str


def new_domain() -> str:
    return f"d{uuid.uuid4().hex[:10]}.example"


@pytest.fixture
async def owner(sso_app: Litestar, session: AsyncSession) -> AsyncIterator[Owner]:
    domain = new_domain()
    email = f"owner@{domain}"
    company = f"Initech {domain[:6]}"
    async with browser(sso_app) as client:
        assert (await sign_up(client, email, company=company)).status_code == 303
        user = await session.scalar(select(User).where(User.email == email))
        assert user is not None
        tenant_id = (await accounts.tenants_of(session, user_id=user.id))[0].tenant.id
        await session.commit()
        yield Owner(client, email, domain, tenant_id, company)


async def configure(
    owner: Owner,
    issuer: str,
    *,
    client_id: str = "herald",
    secret: str = SECRET,
    domains: str | None = None,
    require_sso: bool = False,
    default_role: str = "viewer",
) -> httpx.Response:
    fields = {
        "issuer": issuer,
        "client_id": client_id,
        "client_secret": secret,
        "domains": owner.domain if domains is None else domains,
        "default_role": default_role,
    }
    if require_sso:
        fields["require_sso"] = "on"
    return await post_form(owner.client, "/settings/sso", fields)


async def start_sso(client: httpx.AsyncClient, email: str) -> httpx.Response:
    return await post_form(client, "/sso", {"email": email})


def query(url: str) -> dict[str, str]:
    return {name: values[0] for name, values in parse_qs(urlsplit(url).query).items()}


async def come_back(client: httpx.AsyncClient, callback_url: str) -> httpx.Response:
    """The browser arriving at Herald's callback from the provider."""
    parts = urlsplit(callback_url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == CALLBACK
    return await client.get(f"{parts.path}?{parts.query}")


def failure(page: httpx.Response) -> str:
    found = re.search(r'role="alert">([^<]*)<', page.text)
    return html.unescape(found.group(1).strip()) if found else ""


# ---- the settings page ---------------------------------------------------------------------


async def test_settings_page_empty_then_saved_with_the_secret_sealed(
    owner: Owner, session: AsyncSession, sso_app: Litestar
) -> None:
    empty = await owner.client.get("/settings/sso")
    assert empty.status_code == 200
    assert "Not set up" in empty.text
    assert CALLBACK in empty.text, "the redirect URI to register is shown"
    assert "Test connection" not in empty.text

    saved = await configure(owner, "https://login.microsoftonline.com/acme/v2.0", require_sso=True)
    assert saved.status_code == 303, saved.text
    page = await owner.client.get(saved.headers["location"])
    assert page.status_code == 200
    assert "Saved." in page.text
    assert 'value="https://login.microsoftonline.com/acme/v2.0"' in page.text
    assert f'value="{owner.domain}"' in page.text
    assert "Stored — leave empty to keep it" in page.text
    assert "Test connection" in page.text
    assert SECRET not in page.text, "the secret is never rendered back"

    stored = await session.get(SsoConfig, owner.tenant_id)
    assert stored is not None and stored.require_sso and stored.default_role == "viewer"
    assert SECRET.encode() not in stored.secret_ciphertext
    keyring = keyring_for(sso_app.state.settings)
    assert sso_config.open_secret(stored, keyring) == SECRET

    # Saving without a secret keeps the stored one.
    again = await configure(owner, "https://login.microsoftonline.com/acme/v2.0", secret="")
    assert again.status_code == 303
    await session.refresh(stored)
    assert sso_config.open_secret(stored, keyring) == SECRET and not stored.require_sso

    entries = (
        await session.scalars(
            select(AuditEntry).where(
                AuditEntry.tenant_id == owner.tenant_id, AuditEntry.action == "sso.configured"
            )
        )
    ).all()
    assert [entry.details["secret_changed"] for entry in entries] == [True, False]
    assert all(SECRET not in str(entry.details) for entry in entries)


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"issuer": "ftp://id.example"}, "issuer", "https://"),
        ({"issuer": "https://id.example/?a=1"}, "issuer", "no query"),
        ({"issuer": "x" * 600}, "issuer", "1 to 500"),
        ({"client_secret": "s" * 2001}, "client_secret", "1 to 2000"),
        ({"domains": ",".join(f"d{n}.example" for n in range(21))}, "domains", "at most 20"),
        ({"client_id": ""}, "client_id", "client ID"),
        ({"client_secret": ""}, "client_secret", "client secret"),
        ({"domains": "not a domain!"}, "domains", "is not a domain"),
        ({"default_role": "owner"}, "default_role", "viewer, developer, admin"),
    ],
)
async def test_bad_settings_are_refused_naming_the_field(
    owner: Owner, fields: dict[str, str], field: str, message: str
) -> None:
    data = {
        "issuer": "https://id.example",
        "client_id": "herald",
        "client_secret": SECRET,
        "domains": owner.domain,
        "default_role": "viewer",
        **fields,
    }
    response = await post_form(owner.client, "/settings/sso", data)
    assert response.status_code == 422
    error = re.search(
        rf'id="error-{field}"[^>]*>([^<]*)<|<fieldset class="field has-error">.*?'
        r'<p class="field-error">([^<]*)<',
        response.text,
        re.S,
    )
    assert error, response.text
    assert message in (error.group(1) or error.group(2))
    assert "Not set up" in response.text, "nothing was stored"


async def test_a_domain_belongs_to_one_tenant(owner: Owner, sso_app: Litestar) -> None:
    assert (await configure(owner, "https://id.example")).status_code == 303
    async with browser(sso_app) as other:
        await sign_up(other, f"boss@{new_domain()}", company="Globex")
        rival = Owner(other, "", owner.domain, uuid.uuid4(), "Globex")
        refused = await configure(rival, "https://id.globex.example")
        assert refused.status_code == 422
        assert f"{owner.domain} is used by another Herald account" in refused.text
        # Nothing of the first tenant's settings shows on the other's page.
        page = await other.get("/settings/sso")
        assert page.status_code == 200 and "Not set up" in page.text
        assert "https://id.example" not in page.text


async def test_only_owners_manage_sso(
    owner: Owner, sso_app: Litestar, session: AsyncSession
) -> None:
    assert (await configure(owner, "https://id.example")).status_code == 303
    for role in ("admin", "viewer"):
        email = f"{role}@{owner.domain}"
        await add_member(session, owner.tenant_id, role, email)
        async with browser(sso_app) as member:
            assert (await sign_in(member, email, PASSWORD)).status_code == 303
            assert (await member.get("/settings/sso")).status_code == 403
            token = await csrf_token(member)
            for path in ("/settings/sso", "/settings/sso/test", "/settings/sso/remove"):
                response = await member.post(
                    path, data={"_csrf_token": token, "issuer": "https://evil.example"}
                )
                assert response.status_code == 403, path
                assert "cannot configure single sign-on" in response.text
    stored = await sso_config.get_settings(session, tenant_id=owner.tenant_id)
    assert stored is not None and stored.issuer == "https://id.example"
    with pytest.raises(roles.RoleNotAllowed):
        await sso_config.get_settings(session, tenant_id=owner.tenant_id, role="admin")


async def test_settings_forms_need_a_csrf_token(owner: Owner, session: AsyncSession) -> None:
    fields = {"issuer": "https://id.example", "client_id": "c", "client_secret": "s"}
    for path in ("/settings/sso", "/settings/sso/test", "/settings/sso/remove"):
        response = await owner.client.post(path, data={**fields, "domains": owner.domain})
        assert response.status_code == 403, path
        assert "This form has expired" in response.text
    assert await sso_config.get_config(session, tenant_id=owner.tenant_id) is None


async def test_test_connection_reports_what_discovery_found(
    owner: Owner, forge: TokenForge
) -> None:
    assert (await configure(owner, forge.issuer)).status_code == 303
    token = await csrf_token(owner.client, "/settings/sso")
    result = await owner.client.post("/settings/sso/test", headers=htmx_headers(token))
    assert result.status_code == 200
    assert "Connection works." in result.text and "RS256" in result.text
    assert f"{forge.issuer}/token" in result.text

    broken = await configure(owner, forge.issuer + "/nowhere")
    assert broken.status_code == 303
    result = await owner.client.post("/settings/sso/test", headers=htmx_headers(token))
    assert "Connection failed." in result.text and "HTTP 404" in result.text


async def test_removing_sso_turns_it_off(owner: Owner, session: AsyncSession) -> None:
    assert (await configure(owner, "https://id.example")).status_code == 303
    removed = await post_form(owner.client, "/settings/sso/remove", {})
    assert removed.status_code == 303
    assert "Not set up" in (await owner.client.get("/settings/sso")).text
    assert await sso_config.config_for_domain(session, domain=owner.domain) is None


# ---- signing in through a real provider (Canaille) -----------------------------------------


async def test_a_new_person_signs_in_through_the_provider_and_joins_as_viewer(
    owner: Owner, sso_app: Litestar, session: AsyncSession
) -> None:
    provider = canaille()
    client_id = f"herald-{uuid.uuid4().hex[:8]}"
    provider.add_client(client_id, SECRET, [CALLBACK])
    email = f"bob@{owner.domain}"
    login = provider.add_user(email, name="Bob Example")
    assert (await configure(owner, provider.issuer, client_id=client_id)).status_code == 303

    async with browser(sso_app) as bob:
        form = await bob.get(f"/sso?email={email}")
        assert form.status_code == 200 and f'value="{email}"' in form.text
        # A form post's redirects must pass the form page's form-action policy, and this
        # one leads to the provider (on loopback here, which this app allows).
        assert "form-action 'self' https: http:;" in form.headers["content-security-policy"]
        started = await start_sso(bob, email.upper())
        assert started.status_code == 303, started.text
        authorize = started.headers["location"]
        assert authorize.startswith(f"{provider.issuer}/oauth/authorize?")
        asked = query(authorize)
        assert asked["client_id"] == client_id
        assert asked["redirect_uri"] == CALLBACK
        assert asked["code_challenge_method"] == "S256" and len(asked["code_challenge"]) == 43
        assert asked["nonce"] and asked["state"] and asked["login_hint"].lower() == email
        assert "openid" in asked["scope"].split() and "email" in asked["scope"].split()

        back = await sign_in_at_provider(authorize, login=login)
        assert query(back)["state"] == asked["state"]
        arrived = await come_back(bob, back)
        assert arrived.status_code == 303, arrived.text
        assert arrived.headers["location"] == "/overview"
        keys = await bob.get("/keys")
        assert keys.status_code == 200
        assert owner.company in keys.text and "viewer" in keys.text

        # The answer is single use: the same callback again is refused, in this browser
        # as in another.
        replay = await come_back(bob, back)
        assert replay.status_code == 400
        assert "not started in this browser" in failure(replay)
        # Back at the callback with nothing under way, signed in: home.
        assert (await bob.get("/sso/callback")).headers["location"] == "/overview"
    async with browser(sso_app) as mallory:
        stolen = await come_back(mallory, back)
        assert stolen.status_code == 400
        assert (await mallory.get("/keys")).status_code == 303

    user = await session.scalar(select(User).where(User.email == email))
    assert user is not None and user.email_verified_at is not None and user.name == "Bob Example"
    role = await session.scalar(
        select(Membership.role).where(
            Membership.user_id == user.id, Membership.tenant_id == owner.tenant_id
        )
    )
    assert role == "viewer"
    joined = await session.scalar(
        select(AuditEntry).where(
            AuditEntry.tenant_id == owner.tenant_id, AuditEntry.action == "member.joined"
        )
    )
    assert joined is not None and joined.details["via"] == "sso"


async def test_an_existing_member_signs_in_whatever_their_domain(
    owner: Owner, sso_app: Litestar, session: AsyncSession
) -> None:
    provider = canaille()
    client_id = f"herald-{uuid.uuid4().hex[:8]}"
    provider.add_client(client_id, SECRET, [CALLBACK])
    contractor = f"carol@{new_domain()}"
    await add_member(session, owner.tenant_id, "developer", contractor)
    login = provider.add_user(contractor)
    assert (await configure(owner, provider.issuer, client_id=client_id)).status_code == 303

    async with browser(sso_app) as carol:
        # Discovery is by domain: carol's own domain has no SSO, so she types a work address
        # of the tenant's domain at Herald; the provider decides who she is.
        started = await start_sso(carol, f"anyone@{owner.domain}")
        back = await sign_in_at_provider(started.headers["location"], login=login)
        arrived = await come_back(carol, back)
        assert arrived.status_code == 303
        page = await carol.get("/keys")
        assert page.status_code == 200 and "developer" in page.text


async def test_a_person_of_another_domain_who_is_no_member_is_refused(
    owner: Owner, sso_app: Litestar, session: AsyncSession
) -> None:
    provider = canaille()
    client_id = f"herald-{uuid.uuid4().hex[:8]}"
    provider.add_client(client_id, SECRET, [CALLBACK])
    stranger = f"eve@{new_domain()}"
    login = provider.add_user(stranger)
    assert (await configure(owner, provider.issuer, client_id=client_id)).status_code == 303

    async with browser(sso_app) as eve:
        started = await start_sso(eve, f"eve@{owner.domain}")
        back = await sign_in_at_provider(started.headers["location"], login=login)
        refused = await come_back(eve, back)
        assert refused.status_code == 400
        assert "is not a member of this Herald account" in failure(refused)
        assert (await eve.get("/keys")).status_code == 303, "not signed in"
    assert await session.scalar(select(User).where(User.email == stranger)) is None


async def test_a_person_who_denies_consent_is_told_so(owner: Owner, sso_app: Litestar) -> None:
    provider = canaille()
    client_id = f"herald-{uuid.uuid4().hex[:8]}"
    provider.add_client(client_id, SECRET, [CALLBACK])
    login = provider.add_user(f"dan@{owner.domain}")
    assert (await configure(owner, provider.issuer, client_id=client_id)).status_code == 303
    async with browser(sso_app) as dan:
        started = await start_sso(dan, f"dan@{owner.domain}")
        back = await sign_in_at_provider(started.headers["location"], login=login, consent="deny")
        refused = await come_back(dan, back)
        assert refused.status_code == 400
        assert "did not sign you in (access_denied)" in failure(refused)


async def test_a_wrong_client_secret_is_refused_by_the_provider(
    owner: Owner, sso_app: Litestar
) -> None:
    provider = canaille()
    client_id = f"herald-{uuid.uuid4().hex[:8]}"
    provider.add_client(client_id, SECRET, [CALLBACK])
    login = provider.add_user(f"fay@{owner.domain}")
    configured = await configure(owner, provider.issuer, client_id=client_id, secret="wrong")
    assert configured.status_code == 303
    async with browser(sso_app) as fay:
        started = await start_sso(fay, f"fay@{owner.domain}")
        back = await sign_in_at_provider(started.headers["location"], login=login)
        refused = await come_back(fay, back)
        assert refused.status_code == 400
        assert "provider refused to complete the sign-in (invalid_client)" in failure(refused)


async def test_unknown_domains_and_bad_addresses_stay_on_the_form(sso_app: Litestar) -> None:
    async with browser(sso_app) as visitor:
        unknown = await start_sso(visitor, f"ann@{new_domain()}")
        assert unknown.status_code == 422
        assert "No single sign-on is set up for" in unknown.text
        bad = await start_sso(visitor, "not an address")
        assert bad.status_code == 422 and 'id="error-email"' in bad.text
        stray = await visitor.get("/sso/callback?code=abc&state=def")
        assert stray.status_code == 400
        assert "not started in this browser" in failure(stray)
        huge = await visitor.get(f"/sso/callback?code={'a' * 5000}&state={'b' * 5000}")
        assert huge.status_code == 400


# ---- require SSO ---------------------------------------------------------------------------


async def test_require_sso_refuses_members_passwords_but_not_owners(
    owner: Owner, sso_app: Litestar, session: AsyncSession
) -> None:
    member_email = f"dev@{owner.domain}"
    await add_member(session, owner.tenant_id, "developer", member_email)
    async with browser(sso_app) as member:
        assert (await sign_in(member, member_email, PASSWORD)).status_code == 303
        assert (await member.get("/keys")).status_code == 200

        assert (await configure(owner, "https://id.example", require_sso=True)).status_code == 303
        # The password session begun before SSO was required ends at once...
        assert (await member.get("/keys")).status_code == 303
        # ...and a new password sign-in is refused, pointing to SSO.
        refused = await sign_in(member, member_email, PASSWORD)
        assert refused.status_code == 403
        assert "requires single sign-on" in alert(refused)
        assert "Sign in with SSO" in refused.text

    # Owners keep their password: the way back in when the provider fails.
    async with browser(sso_app) as again:
        assert (await sign_in(again, owner.email, PASSWORD)).status_code == 303
        assert (await again.get("/settings/sso")).status_code == 200

    assert (await configure(owner, "https://id.example", require_sso=False)).status_code == 303
    async with browser(sso_app) as member:
        assert (await sign_in(member, member_email, PASSWORD)).status_code == 303


async def test_a_tenant_that_requires_sso_is_not_entered_by_switching_from_a_password_session(
    owner: Owner, sso_app: Litestar, session: AsyncSession
) -> None:
    """A person who owns a tenant of their own and is a developer of one that requires SSO:
    their password opens their own, and the switch to the other is refused, pointing to SSO;
    signed in through the provider, they switch back and forth freely."""
    provider = canaille()
    client_id = f"herald-{uuid.uuid4().hex[:8]}"
    provider.add_client(client_id, SECRET, [CALLBACK])
    assert (
        await configure(owner, provider.issuer, client_id=client_id, require_sso=True)
    ).status_code == 303
    email = f"hal@{owner.domain}"
    login = provider.add_user(email)
    async with browser(sso_app) as hal:
        assert (await sign_up(hal, email, company="Hal's own")).status_code == 303
        user = await session.scalar(select(User).where(User.email == email))
        assert user is not None
        own = (await accounts.tenants_of(session, user_id=user.id))[0].tenant.id
        session.add(Membership(user_id=user.id, tenant_id=owner.tenant_id, role="developer"))
        await session.commit()

        # A password sign-in lands in the tenant that takes passwords.
        assert (await sign_in(hal, email, PASSWORD)).status_code == 303
        assert "Hal&#39;s own" in (await hal.get("/keys")).text
        refused = await post_form(hal, "/tenants/switch", {"tenant_id": str(owner.tenant_id)})
        assert refused.status_code == 403
        assert "requires single sign-on" in html.unescape(refused.text)
        assert (await hal.get("/keys")).status_code == 200, "still signed in to their own"

    async with browser(sso_app) as hal:
        started = await start_sso(hal, email)
        back = await sign_in_at_provider(started.headers["location"], login=login)
        assert (await come_back(hal, back)).status_code == 303
        assert owner.company in (await hal.get("/keys")).text
        mine = await post_form(hal, "/tenants/switch", {"tenant_id": str(own)})
        assert mine.status_code == 303
        again = await post_form(hal, "/tenants/switch", {"tenant_id": str(owner.tenant_id)})
        assert again.status_code == 303
        assert owner.company in (await hal.get("/keys")).text


# ---- what an honest provider never sends ---------------------------------------------------


@dataclass
class Started:
    client: httpx.AsyncClient
    state: str
    nonce: str
    challenge: str


@pytest.fixture
async def forged(
    owner: Owner, forge: TokenForge, sso_app: Litestar
) -> AsyncIterator[tuple[Owner, TokenForge, Started]]:
    oidc.providers.clear()
    assert (await configure(owner, forge.issuer, client_id="herald")).status_code == 303
    async with browser(sso_app) as person:
        started = await start_sso(person, f"gus@{owner.domain}")
        assert started.status_code == 303
        asked = query(started.headers["location"])
        assert started.headers["location"].startswith(f"{forge.issuer}/authorize?")
        yield owner, forge, Started(person, asked["state"], asked["nonce"], asked["code_challenge"])


async def callback(started: Started, state: str | None = None) -> httpx.Response:
    return await started.client.get(
        "/sso/callback", params={"code": "the-code", "state": state or started.state}
    )


async def test_a_forged_token_with_everything_right_signs_in_with_pkce(
    forged: tuple[Owner, TokenForge, Started],
) -> None:
    """The control for the tests below: the forge's own key, audience, nonce and time."""
    owner, forge, started = forged
    forge.next_id_token = forge.id_token(
        nonce=started.nonce, audience="herald", email=f"gus@{owner.domain}"
    )
    arrived = await callback(started)
    assert arrived.status_code == 303, arrived.text
    [request] = forge.token_requests
    assert request["grant_type"] == ["authorization_code"] and request["code"] == ["the-code"]
    assert request["redirect_uri"] == [CALLBACK]
    assert s256(request["code_verifier"][0]) == started.challenge, "PKCE S256"
    assert request["authorization"][0].startswith("Basic "), "client_secret_basic"


async def test_a_wrong_state_is_refused_before_the_provider_is_asked(
    forged: tuple[Owner, TokenForge, Started],
) -> None:
    _, forge, started = forged
    refused = await callback(started, state="not-the-state")
    assert refused.status_code == 400
    assert "not started in this browser" in failure(refused)
    assert forge.token_requests == []
    # And the sign-in under way is used up: the right state no longer works either.
    assert (await callback(started)).status_code == 400


@pytest.mark.parametrize(
    ("forgery", "message"),
    [
        ("nonce", "not issued for this sign-in (nonce)"),
        ("key", "signature does not verify"),
        ("same_kid_other_key", "signature does not verify"),
        ("audience", "not valid for Herald (Invalid claim: 'aud')"),
        ("issuer", "not valid for Herald (Invalid claim: 'iss')"),
        ("expired", "has expired"),
        ("unverified", "has not verified your e-mail address"),
        ("garbage", "signature does not verify"),
    ],
)
async def test_forged_id_tokens_are_refused(
    forged: tuple[Owner, TokenForge, Started],
    session: AsyncSession,
    forgery: str,
    message: str,
) -> None:
    owner, forge, started = forged
    email = f"gus@{owner.domain}"
    right = {"nonce": started.nonce, "audience": "herald", "email": email}
    if forgery == "nonce":
        token = forge.id_token(**{**right, "nonce": "another-sign-in"})
    elif forgery == "key":
        token = forge.id_token(**right, key=new_key())
    elif forgery == "same_kid_other_key":
        # Claims to be the provider's key.
        impostor = RSAKey.generate_key(2048, parameters={"kid": forge.key.kid})
        token = forge.id_token(**right, key=impostor)
    elif forgery == "audience":
        token = forge.id_token(**{**right, "audience": "another-client"})
    elif forgery == "issuer":
        token = forge.id_token(**right, issuer="https://evil.example")
    elif forgery == "expired":
        token = forge.id_token(**right, expires_in=-3600)
    elif forgery == "unverified":
        token = forge.id_token(**right, email_verified=False)
    else:
        token = "not.a.token"
    forge.next_id_token = token
    refused = await callback(started)
    assert refused.status_code == 400, refused.text
    assert message in failure(refused)
    assert (await started.client.get("/keys")).status_code == 303, "nobody signed in"
    assert await session.scalar(select(User).where(User.email == email)) is None


async def test_several_audiences_need_azp(forged: tuple[Owner, TokenForge, Started]) -> None:
    owner, forge, started = forged
    forge.next_id_token = forge.id_token(
        nonce=started.nonce, audience=["herald", "other"], email=f"gus@{owner.domain}"
    )
    refused = await callback(started)
    assert refused.status_code == 400 and "(azp)" in failure(refused)


async def test_discovery_is_cached(forged: tuple[Owner, TokenForge, Started]) -> None:
    owner, forge, started = forged
    before = forge.discovery_requests
    again = await start_sso(started.client, f"gus@{owner.domain}")
    assert again.status_code == 303
    assert forge.discovery_requests == before, "the second start used the cache"


# ---- the default settings refuse private issuers -------------------------------------------


async def test_private_and_plain_http_issuers_are_refused_by_default(
    app: Litestar, forge: TokenForge
) -> None:
    async with browser(app) as client:
        form = await client.get("/sso")
        assert "form-action 'self' https:;" in form.headers["content-security-policy"]
        await sign_up(client, f"boss@{new_domain()}", company="Hooli")
        for issuer in (forge.issuer, "http://id.example", "https://10.1.2.3"):
            fields = {
                "issuer": issuer,
                "client_id": "herald",
                "client_secret": SECRET,
                "domains": new_domain(),
                "default_role": "viewer",
            }
            refused = await post_form(client, "/settings/sso", fields)
            assert refused.status_code == 422, issuer
            assert 'id="error-issuer"' in refused.text
