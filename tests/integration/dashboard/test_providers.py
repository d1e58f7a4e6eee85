"""The providers page over HTTP: configs per channel, credentials write-only, breakers and
their reset, enabling, "send a test" through one config; roles, CSRF and tenant isolation."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from litestar import Litestar
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app import crypto
from app.audit.models import AuditEntry
from app.main import create_app
from app.providers.breaker import CircuitBreakers, route_key_for
from app.providers.models import ProviderConfig
from app.providers.service import open_credentials
from app.runtime import ServiceUrls
from app.settings import Settings
from tests.dashboard import post_form
from tests.fakes import Mailbox
from tests.integration.dashboard.people import signed_in
from tests.support import TenantKey, serving, settings_for

SECRET = "Sup3r-s3cret-SMTP-password-do-not-show"
NEW_SECRET = "An0ther-s3cret-never-rendered"


def smtp_form(port: int = 2525, **changes: str) -> dict[str, str]:
    fields = {
        "provider": "smtp",
        "channel": "email",
        "name": "Our relay",
        "priority": "10",
        "rate_per_second": "5",
        "burst": "10",
        "enabled": "on",
        "options.from_email": "noreply@acme.example",
        "options.host": "127.0.0.1",
        "options.port": str(port),
        "options.security": "none",
        "credentials.username": "relay-user",
        "credentials.password": SECRET,
    }
    return {**fields, **changes}


async def config_named(session: AsyncSession, tenant_id: uuid.UUID, name: str) -> ProviderConfig:
    session.expire_all()
    config = await session.scalar(
        select(ProviderConfig).where(
            ProviderConfig.tenant_id == tenant_id, ProviderConfig.name == name
        )
    )
    assert config is not None
    return config


async def add_smtp(
    app: Litestar,
    session: AsyncSession,
    tenant: TenantKey,
    port: int = 2525,
    name: str = "Our relay",
    auth: bool = True,
) -> ProviderConfig:
    """A config made through the form; without `auth` (the test's SMTP server has none),
    no credentials."""
    fields = smtp_form(port, name=name)
    if not auth:
        fields.update({"credentials.username": "", "credentials.password": ""})
    async with signed_in(app, session, tenant.tenant_id, "developer") as developer:
        created = await post_form(developer, "/providers", fields)
        assert created.status_code == 303, created.text
    return await config_named(session, tenant.tenant_id, name)


async def test_empty_page_per_channel(
    app: Litestar, session: AsyncSession, tenant: TenantKey
) -> None:
    async with signed_in(app, session, tenant.tenant_id, "owner") as owner:
        page = await owner.get("/providers")
        assert page.status_code == 200
        for channel in ("email", "sms", "push", "webhook"):
            assert f"No {channel} provider yet" in page.text
        assert 'href="/providers/new"' in page.text
        choose = await owner.get("/providers/new")
        assert choose.status_code == 200 and "Amazon SES" in choose.text
        form = await owner.get("/providers/new", params={"provider": "twilio"})
        assert 'name="credentials.auth_token"' in form.text
        assert 'name="options.from_number"' in form.text


async def test_add_edit_and_credentials_never_rendered(
    app: Litestar, session: AsyncSession, settings: Settings, tenant: TenantKey
) -> None:
    keyring = crypto.keyring_for(settings)
    async with signed_in(app, session, tenant.tenant_id, "developer") as developer:
        created = await post_form(developer, "/providers", smtp_form())
        assert (
            created.status_code == 303
            and created.headers["location"] == "/providers?notice=created"
        )
        config = await config_named(session, tenant.tenant_id, "Our relay")
        assert open_credentials(config, keyring) == {"username": "relay-user", "password": SECRET}

        pages = [
            await developer.get("/providers"),
            await developer.get(f"/providers/{config.id}"),
            await developer.get("/providers/new?provider=smtp"),
        ]
        listed = pages[0].text
        assert "Our relay" in listed and config.fingerprint in listed
        assert "noreply@acme.example" in pages[1].text  # options are shown, credentials never

        # An empty secret keeps the stored one; the other fields change.
        kept = await post_form(
            developer,
            f"/providers/{config.id}",
            smtp_form(
                name="Relay 2",
                priority="3",
                **{"credentials.password": "", "credentials.username": ""},
            ),
        )
        assert kept.status_code == 303, kept.text
        config = await config_named(session, tenant.tenant_id, "Relay 2")
        assert config.priority == 3
        assert open_credentials(config, keyring) == {"username": "relay-user", "password": SECRET}

        replaced = await post_form(
            developer,
            f"/providers/{config.id}",
            smtp_form(
                name="Relay 2", **{"credentials.password": NEW_SECRET, "credentials.username": ""}
            ),
        )
        assert replaced.status_code == 303
        config = await config_named(session, tenant.tenant_id, "Relay 2")
        assert open_credentials(config, keyring) == {
            "username": "relay-user",
            "password": NEW_SECRET,
        }

        refused = await post_form(
            developer,
            f"/providers/{config.id}",
            smtp_form(
                name="Relay 2",
                **{"options.from_email": "not-an-email", "credentials.password": SECRET},
            ),
        )
        assert refused.status_code == 422
        pages += [
            refused,
            await developer.get(f"/providers/{config.id}"),
            await developer.get("/providers"),
        ]
        for page in pages:
            assert SECRET not in page.text and NEW_SECRET not in page.text
            assert "relay-user" not in page.text
    entries = list(
        await session.scalars(
            select(AuditEntry.action).where(
                AuditEntry.tenant_id == tenant.tenant_id, AuditEntry.action.like("provider.%")
            )
        )
    )
    assert entries.count("provider.created") == 1 and entries.count("provider.updated") == 2
    for entry in await session.scalars(
        select(AuditEntry).where(AuditEntry.tenant_id == tenant.tenant_id)
    ):
        assert SECRET not in str(entry.details) and NEW_SECRET not in str(entry.details)


async def test_bad_provider_input_is_422_naming_the_field(
    app: Litestar, session: AsyncSession, tenant: TenantKey
) -> None:
    async with signed_in(app, session, tenant.tenant_id, "admin") as admin:
        for changes, named in (
            ({"priority": "-1"}, "field-priority"),
            ({"priority": "x" * 50}, "field-priority"),
            ({"rate_per_second": "nan"}, "field-rate"),
            ({"burst": "0"}, "field-burst"),
            ({"name": ""}, "field-name"),
            ({"name": "n" * 101}, "field-name"),
            ({"channel": "sms"}, "field-channel"),
            ({"options.port": "99999"}, "options.port"),
            ({"options.from_email": "nope"}, "options.from_email"),
            ({"credentials.password": "p" * 10_001}, "credentials.password"),
        ):
            answer = await post_form(admin, "/providers", smtp_form(**changes))
            assert answer.status_code == 422, (changes, answer.text[:300])
            assert 'class="field-error"' in answer.text, changes
            assert named in answer.text, changes
            assert SECRET not in answer.text
        unknown = await post_form(admin, "/providers", smtp_form(provider="carrier-pigeon"))
        assert unknown.status_code == 422
    assert (
        await session.scalar(
            select(ProviderConfig.id).where(ProviderConfig.tenant_id == tenant.tenant_id)
        )
        is None
    )


async def test_breaker_state_shown_and_reset(
    app: Litestar, session: AsyncSession, tenant: TenantKey
) -> None:
    config = await add_smtp(app, session, tenant)
    breakers: CircuitBreakers = app.state.breakers
    route = route_key_for(config.id, config.channel)
    tripped = await breakers.record(tenant.tenant_id, route, successes=0, failures=40)
    assert tripped.state == "open"
    async with signed_in(app, session, tenant.tenant_id, "viewer") as viewer:
        page = await viewer.get("/providers")
        assert 'class="breaker breaker-open"' in page.text
        assert "Reset breaker" not in page.text  # a viewer sees no buttons
        assert (
            await post_form(viewer, f"/providers/{config.id}/breaker/reset", {})
        ).status_code == 403
    async with signed_in(app, session, tenant.tenant_id, "developer") as developer:
        path = f"/providers/{config.id}/breaker/reset"
        assert (await developer.post(path)).status_code == 403  # no CSRF token
        assert (await breakers.states(tenant.tenant_id, [route]))[route].state == "open"
        reset = await post_form(developer, path, {})
        assert reset.status_code == 303 and reset.headers["location"] == "/providers?notice=reset"
        assert (await breakers.states(tenant.tenant_id, [route]))[route].state == "closed"
        page = await developer.get("/providers?notice=reset")
        assert 'class="breaker breaker-closed"' in page.text and "Breaker closed" in page.text
    audited = await session.scalar(
        select(AuditEntry).where(
            AuditEntry.tenant_id == tenant.tenant_id, AuditEntry.action == "provider.breaker_reset"
        )
    )
    assert audited is not None and audited.details["breaker"] == "open"


async def test_enable_and_disable(app: Litestar, session: AsyncSession, tenant: TenantKey) -> None:
    config = await add_smtp(app, session, tenant)
    async with signed_in(app, session, tenant.tenant_id, "developer") as developer:
        assert (
            await post_form(developer, f"/providers/{config.id}/disable", {})
        ).status_code == 303
        assert not (await config_named(session, tenant.tenant_id, "Our relay")).enabled
        assert "disabled</span>" in (await developer.get("/providers")).text
        assert (await post_form(developer, f"/providers/{config.id}/enable", {})).status_code == 303
        assert (await config_named(session, tenant.tenant_id, "Our relay")).enabled


@pytest.fixture(scope="module")
async def open_app(service_urls: ServiceUrls) -> AsyncIterator[Litestar]:
    """The app as an on-premise install runs it: providers may be on private addresses (the
    test's own SMTP server on 127.0.0.1)."""
    settings = settings_for(
        service_urls.database_url, service_urls.redis_url, HERALD_ALLOW_PRIVATE_URLS="true"
    )
    async with serving(create_app(settings)) as application:
        yield application


async def test_send_a_test_through_one_provider(
    open_app: Litestar,
    session: AsyncSession,
    tenant: TenantKey,
    mailbox: tuple[Mailbox, int],
) -> None:
    box, port = mailbox
    config = await add_smtp(open_app, session, tenant, port=port, auth=False)
    path = f"/providers/{config.id}/test"
    async with signed_in(open_app, session, tenant.tenant_id, "viewer") as viewer:
        assert "Send test" not in (await viewer.get("/providers")).text
        assert (await post_form(viewer, path, {"address": "me@acme.example"})).status_code == 403
    async with signed_in(open_app, session, tenant.tenant_id, "developer") as developer:
        assert (await developer.post(path, data={"address": "me@acme.example"})).status_code == 403
        sent = await post_form(developer, path, {"address": "me@acme.example"})
        assert sent.status_code == 200, sent.text
        assert "Sent through SMTP server" in sent.text, re.findall(
            r"test-result[^>]*>([^<]*)", sent.text
        )
        assert [envelope.rcpt_tos for envelope in box.received] == [["me@acme.example"]]
        assert b"Test message from Herald" in (box.received[0].content or b"")

        for address, says in (("", "Type the address"), ("not an address", "Not sent")):
            refused = await post_form(developer, path, {"address": address})
            assert refused.status_code == 422 and says in refused.text
        assert len(box.received) == 1
        assert SECRET not in sent.text

    async with signed_in(open_app, session, tenant.tenant_id, "developer", mode="test") as tester:
        sandboxed = await post_form(tester, path, {"address": "me@acme.example"})
        assert sandboxed.status_code == 200
        assert "the sandbox answered" in sandboxed.text
        assert len(box.received) == 1  # no real provider was called in test mode
    entries = list(
        await session.scalars(
            select(AuditEntry).where(
                AuditEntry.tenant_id == tenant.tenant_id, AuditEntry.action == "provider.test_sent"
            )
        )
    )
    assert [e.details["mode"] for e in entries] == ["live", "test"]
    assert all("me@acme.example" not in str(e.details) for e in entries)


async def test_suppressed_address_is_not_sent_a_test(
    open_app: Litestar,
    client: httpx.AsyncClient,
    session: AsyncSession,
    tenant: TenantKey,
    mailbox: tuple[Mailbox, int],
) -> None:
    box, port = mailbox
    config = await add_smtp(open_app, session, tenant, port=port, auth=False)
    added = await client.post(
        "/v1/suppressions",
        headers=tenant.headers,
        json={"channel": "email", "address": "gone@acme.example", "reason": "hard_bounce"},
    )
    assert added.status_code == 201
    async with signed_in(open_app, session, tenant.tenant_id, "owner") as owner:
        refused = await post_form(
            owner, f"/providers/{config.id}/test", {"address": "Gone@acme.example"}
        )
        assert refused.status_code == 422 and "suppressed" in refused.text
    assert box.received == []


async def test_another_tenants_provider_is_404_and_never_listed(
    app: Litestar, session: AsyncSession, tenant: TenantKey, other_tenant: TenantKey
) -> None:
    theirs = await add_smtp(app, session, other_tenant, name="Their relay")
    async with signed_in(app, session, tenant.tenant_id, "owner") as owner:
        assert "Their relay" not in (await owner.get("/providers")).text
        assert (await owner.get(f"/providers/{theirs.id}")).status_code == 404
        for action, fields in (
            ("", smtp_form(name="Hijacked")),
            ("/disable", {}),
            ("/breaker/reset", {}),
            ("/test", {"address": "me@acme.example"}),
        ):
            answer = await post_form(owner, f"/providers/{theirs.id}{action}", fields)
            assert answer.status_code == 404, action
    still = await config_named(session, other_tenant.tenant_id, "Their relay")
    assert still.enabled and still.name == "Their relay"


async def test_every_provider_post_refuses_a_viewer(
    app: Litestar, session: AsyncSession, tenant: TenantKey
) -> None:
    config = await add_smtp(app, session, tenant)
    async with signed_in(app, session, tenant.tenant_id, "viewer") as viewer:
        for path in (
            "/providers",
            f"/providers/{config.id}",
            f"/providers/{config.id}/enable",
            f"/providers/{config.id}/disable",
            f"/providers/{config.id}/breaker/reset",
            f"/providers/{config.id}/test",
        ):
            answer = await post_form(viewer, path, smtp_form(address="me@acme.example"))
            assert answer.status_code == 403, path
            assert re.search(r"viewer\)", answer.text), path
        away = await viewer.get("/providers/new")
        assert away.status_code == 303 and away.headers["location"] == "/providers"
    unchanged = await config_named(session, tenant.tenant_id, "Our relay")
    assert unchanged.enabled and unchanged.priority == 10
