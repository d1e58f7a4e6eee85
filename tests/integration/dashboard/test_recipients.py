"""The recipients pages over HTTP: search, a recipient's page, lifting a suppression and
erasure with its confirmation; roles, CSRF, and tenant and mode isolation."""

from __future__ import annotations

import re
import uuid

import httpx
import pytest
from litestar import Litestar
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app import crypto
from app.audit.models import AuditEntry
from app.auth import roles
from app.delivery.retry import RetryPolicy
from app.notifications.models import Message
from app.providers import probe
from app.providers import service as providers
from app.providers.models import ProviderConfig
from app.recipients import service, suppressions
from app.recipients.models import Recipient, Suppression
from app.runtime import ServiceUrls
from app.settings import Settings
from app.tenants import delivery_controls as controls
from tests.dashboard import post_form
from tests.integration.dashboard.people import signed_in
from tests.send_path import drain, notify, put_recipient, put_template, workers
from tests.support import TenantKey, key_of, make_tenant


async def recipient_id(session: AsyncSession, tenant: TenantKey, external_id: str) -> uuid.UUID:
    found = await session.scalar(
        select(Recipient.id).where(
            Recipient.tenant_id == tenant.tenant_id,
            Recipient.mode == tenant.mode,
            Recipient.external_id == external_id,
        )
    )
    assert found is not None
    return found


def ids_listed(page: httpx.Response) -> list[str]:
    return re.findall(
        r'<td class="recipient-id"><a href="/recipients/[0-9a-f-]{36}">([^<]+)</a>', page.text
    )


async def test_list_and_search_by_id_email_and_phone_prefix(
    app: Litestar, client: httpx.AsyncClient, session: AsyncSession, tenant: TenantKey
) -> None:
    await put_recipient(
        client, tenant, "user-alpha", email="Alpha.One@Example.com", phone="+442071838750"
    )
    await put_recipient(client, tenant, "user-beta", email="beta@example.com", phone="+14155550123")
    await put_recipient(client, tenant, "other-gamma", email="gamma@acme.org")
    async with signed_in(app, session, tenant.tenant_id, "viewer") as browser_:
        everyone = await browser_.get("/recipients")
        assert everyone.status_code == 200
        assert ids_listed(everyone) == ["other-gamma", "user-beta", "user-alpha"]  # newest first

        by_id = await browser_.get("/recipients", params={"q": "user-"})
        assert ids_listed(by_id) == ["user-alpha", "user-beta"]
        by_email = await browser_.get("/recipients", params={"q": "ALPHA.one@"})
        assert ids_listed(by_email) == ["user-alpha"]
        by_phone = await browser_.get("/recipients", params={"q": "+1 415"})
        assert ids_listed(by_phone) == ["user-beta"]
        in_field = await browser_.get("/recipients", params={"q": "gam", "by": "email"})
        assert ids_listed(in_field) == ["other-gamma"]
        nobody = await browser_.get("/recipients", params={"q": "zzz"})
        assert nobody.status_code == 200 and ids_listed(nobody) == []
        assert "starts with" in nobody.text


async def test_search_pages_with_a_cursor(
    app: Litestar, client: httpx.AsyncClient, session: AsyncSession
) -> None:
    tenant = await make_tenant(session, "Paged")
    response = await client.post(
        "/v1/recipients/batch",
        headers=tenant.headers,
        # One e-mail for all: its pages are ordered, and cut, by recipient id.
        json={
            "recipients": [
                {"external_id": f"p-{n:03d}", "email": "same@acme.example"} for n in range(30)
            ]
        },
    )
    assert response.status_code == 200, response.text
    async with signed_in(app, session, tenant.tenant_id, "viewer") as browser_:
        first = await browser_.get("/recipients", params={"q": "p-"})
        assert ids_listed(first) == [f"p-{n:03d}" for n in range(25)]
        after = re.search(r'href="/recipients\?([^"]+)">Next page', first.text)
        assert after, "a next page link"
        second = await browser_.get("/recipients?" + after.group(1).replace("&amp;", "&"))
        assert ids_listed(second) == [f"p-{n:03d}" for n in range(25, 30)]
        assert "Next page" not in second.text

        shared = await browser_.get("/recipients", params={"q": "same@"})
        more = re.search(r'href="/recipients\?([^"]+)">Next page', shared.text)
        assert more
        rest = await browser_.get("/recipients?" + more.group(1).replace("&amp;", "&"))
        assert sorted(ids_listed(shared) + ids_listed(rest)) == [f"p-{n:03d}" for n in range(30)]
        assert len(ids_listed(rest)) == 5

        newest = await browser_.get("/recipients")
        link = re.search(r'href="/recipients\?([^"]+)">Next page', newest.text)
        assert link
        older = await browser_.get("/recipients?" + link.group(1).replace("&amp;", "&"))
        assert len(ids_listed(newest)) == 25 and len(ids_listed(older)) == 5
        assert set(ids_listed(newest)).isdisjoint(ids_listed(older))


async def test_bad_search_input_is_422_naming_the_field(
    app: Litestar, session: AsyncSession, tenant: TenantKey
) -> None:
    async with signed_in(app, session, tenant.tenant_id, "viewer") as browser_:
        for params, named in (
            ({"q": "x" * 201}, "at most 200"),
            ({"q": "a", "by": "address"}, "search by external id"),
            ({"q": "abc", "by": "phone"}, "phone number"),
            ({"q": "a\x01b"}, "control characters"),
            ({"after": "not-a-uuid"}, "not a cursor"),
            ({"q": "a@", "after": "x|y"}, "not a cursor"),
            ({"after": "x" * 5000}, "not a cursor"),
        ):
            answer = await browser_.get("/recipients", params=params)
            assert answer.status_code == 422, params
            assert named in answer.text, params
        assert (await browser_.get("/recipients/not-a-uuid")).status_code in (400, 404)


async def test_detail_shows_addresses_preferences_suppressions_topics_inbox_and_messages(
    app: Litestar,
    client: httpx.AsyncClient,
    session: AsyncSession,
    settings: Settings,
    service_urls: ServiceUrls,
) -> None:
    sandbox = await make_tenant(session, "Detailed", mode="test")
    await put_template(
        client,
        sandbox,
        "hello",
        {
            "email": {"subject": "Hi", "text": "Hello"},
            "inbox": {"title": "Your order shipped", "body": "Soon there"},
        },
    )
    await put_recipient(client, sandbox, "dana", email="dana@example.com", phone="+14155550199")
    prefs = await client.put(
        "/v1/recipients/dana/preferences",
        headers=sandbox.headers,
        json={"channels": {"sms": False}, "categories": {"marketing": {"email": False}}},
    )
    assert prefs.status_code == 200, prefs.text
    added = await client.post(
        "/v1/suppressions",
        headers=sandbox.headers,
        json={"channel": "email", "address": "DANA@example.com", "reason": "complaint"},
    )
    assert added.status_code == 201, added.text
    topic = await client.put(
        "/v1/topics/weekly", headers=sandbox.headers, json={"name": "Weekly digest"}
    )
    assert topic.status_code in (200, 201), topic.text
    joined = await client.post(
        "/v1/topics/weekly/members", headers=sandbox.headers, json={"recipients": ["dana"]}
    )
    assert joined.status_code == 200, joined.text
    await notify(client, sandbox, template="hello", to=["dana"])
    async with workers(settings) as ctx:
        await drain(ctx, service_urls.redis_url)
    dana = await recipient_id(session, sandbox, "dana")
    message_ids = list(
        await session.scalars(select(Message.id).where(Message.tenant_id == sandbox.tenant_id))
    )
    assert message_ids

    async with signed_in(app, session, sandbox.tenant_id, "viewer", mode="test") as browser_:
        page = await browser_.get(f"/recipients/{dana}")
        assert page.status_code == 200, page.text
        text = page.text
        assert "dana@example.com" in text and "+14155550199" in text
        assert "marketing" in text  # a category switch
        assert "complaint" in text  # the suppression of her e-mail
        assert "weekly" in text and "Weekly digest" in text
        assert "Your order shipped" in text  # her inbox
        for message_id in message_ids:
            assert f'href="/messages/{message_id}"' in text
        assert 'href="/messages?recipient=dana"' in text
        # A viewer sees no forms that change anything.
        assert "Lift</button>" not in text and "Erase recipient" not in text

    async with signed_in(app, session, sandbox.tenant_id, "admin", mode="test") as admin:
        text = (await admin.get(f"/recipients/{dana}")).text
        assert "Lift</button>" in text and "Erase recipient" in text


async def test_empty_recipient_page_says_what_to_do(
    app: Litestar, client: httpx.AsyncClient, session: AsyncSession, tenant: TenantKey
) -> None:
    await put_recipient(client, tenant, "lonely")
    lonely = await recipient_id(session, tenant, "lonely")
    async with signed_in(app, session, tenant.tenant_id, "developer") as browser_:
        page = await browser_.get(f"/recipients/{lonely}")
        assert page.status_code == 200
        assert "No messages to them yet" in page.text
        assert "None of their addresses is suppressed" in page.text
        assert "Not a member of any topic" in page.text
    fresh = await make_tenant(session, "Empty")
    async with signed_in(app, session, fresh.tenant_id, "owner") as browser_:
        assert "No recipients in your live data yet" in (await browser_.get("/recipients")).text


async def test_lifting_a_suppression(
    app: Litestar, client: httpx.AsyncClient, session: AsyncSession, tenant: TenantKey
) -> None:
    await put_recipient(client, tenant, "sam", email="sam@example.com")
    added = await client.post(
        "/v1/suppressions",
        headers=tenant.headers,
        json={"channel": "email", "address": "sam@example.com", "reason": "hard_bounce"},
    )
    suppression = uuid.UUID(added.json()["id"])
    sam = await recipient_id(session, tenant, "sam")
    path = f"/recipients/{sam}/suppressions/{suppression}/remove"

    async with signed_in(app, session, tenant.tenant_id, "viewer") as viewer:
        assert (await post_form(viewer, path, {})).status_code == 403
    async with signed_in(app, session, tenant.tenant_id, "developer") as developer:
        assert (await developer.post(path, data={})).status_code == 403  # no CSRF token
        assert await session.scalar(select(Suppression.id).where(Suppression.id == suppression))
        lifted = await post_form(developer, path, {})
        assert lifted.status_code == 303
        assert lifted.headers["location"] == f"/recipients/{sam}?notice=suppression_removed"
        session.expire_all()
        assert (
            await session.scalar(select(Suppression.id).where(Suppression.id == suppression))
            is None
        )
        assert (await post_form(developer, path, {})).status_code == 404
    entry = await session.scalar(
        select(AuditEntry).where(
            AuditEntry.tenant_id == tenant.tenant_id, AuditEntry.action == "suppression.removed"
        )
    )
    assert entry is not None and entry.actor.startswith("user:developer-")


async def test_erasure_needs_the_id_typed_and_really_erases(
    app: Litestar, client: httpx.AsyncClient, session: AsyncSession, tenant: TenantKey
) -> None:
    await put_recipient(client, tenant, "erin", email="erin@example.com", phone="+14155550142")
    erin = await recipient_id(session, tenant, "erin")
    path = f"/recipients/{erin}/erase"

    async with signed_in(app, session, tenant.tenant_id, "viewer") as viewer:
        assert (await post_form(viewer, path, {"confirm": "erin"})).status_code == 403
    async with signed_in(app, session, tenant.tenant_id, "developer") as developer:
        # Erasure is for owners and admins (app/auth/roles.py).
        refused = await post_form(developer, path, {"confirm": "erin"})
        assert refused.status_code == 403
        assert "cannot erase recipients" in refused.text
    async with signed_in(app, session, tenant.tenant_id, "admin") as admin:
        assert (await admin.post(path, data={"confirm": "erin"})).status_code == 403  # no CSRF
        for typed in ("", "eri", "ERIN"):
            wrong = await post_form(admin, path, {"confirm": typed})
            assert wrong.status_code == 422, typed
            assert "nothing was erased" in wrong.text or "to confirm" in wrong.text
        session.expire_all()
        kept = await session.get(Recipient, erin)
        assert kept is not None and kept.erased_at is None and kept.email == "erin@example.com"

        done = await post_form(admin, path, {"confirm": "erin"})
        assert done.status_code == 303 and done.headers["location"] == "/recipients?notice=erased"
        assert "was erased" in (await admin.get(done.headers["location"])).text
        session.expire_all()
        gone = await session.get(Recipient, erin)
        assert gone is not None and gone.erased_at is not None
        assert gone.email is None and gone.phone is None and gone.external_id.startswith("erased:")
        assert (await admin.get(f"/recipients/{erin}")).status_code == 404
        assert (await post_form(admin, path, {"confirm": "erin"})).status_code == 404
        assert "erin" not in ids_listed(await admin.get("/recipients"))
        assert ids_listed(await admin.get("/recipients", params={"q": "erased"})) == []
    entry = await session.scalar(
        select(AuditEntry).where(
            AuditEntry.tenant_id == tenant.tenant_id,
            AuditEntry.action == "recipient.erased",
            AuditEntry.target == str(erin),
        )
    )
    assert entry is not None and entry.actor.startswith("user:admin-")


async def test_other_tenants_and_the_other_modes_recipients_are_404_and_never_listed(
    app: Litestar,
    client: httpx.AsyncClient,
    session: AsyncSession,
    tenant: TenantKey,
    other_tenant: TenantKey,
) -> None:
    await put_recipient(client, tenant, "ours", email="ours@example.com")
    await put_recipient(client, other_tenant, "theirs", email="theirs@example.com")
    test_key = await key_of(session, tenant, "test")
    await put_recipient(client, test_key, "sandboxed", email="sandboxed@example.com")
    theirs = await recipient_id(session, other_tenant, "theirs")
    sandboxed = await recipient_id(session, test_key, "sandboxed")
    async with signed_in(app, session, tenant.tenant_id, "owner") as owner:
        listed = await owner.get("/recipients")
        assert ids_listed(listed) == ["ours"]
        assert "theirs" not in listed.text and "sandboxed" not in listed.text
        assert ids_listed(await owner.get("/recipients", params={"q": "theirs@"})) == []
        assert ids_listed(await owner.get("/recipients", params={"q": "sand"})) == []
        for foreign in (theirs, sandboxed):
            assert (await owner.get(f"/recipients/{foreign}")).status_code == 404
            erase = await post_form(owner, f"/recipients/{foreign}/erase", {"confirm": "x"})
            assert erase.status_code == 404
        assert (await owner.get(f"/recipients/{uuid.uuid4()}")).status_code == 404
    async with signed_in(app, session, tenant.tenant_id, "owner", mode="test") as tester:
        assert ids_listed(await tester.get("/recipients")) == ["sandboxed"]
        ours = await recipient_id(session, tenant, "ours")
        assert (await tester.get(f"/recipients/{ours}")).status_code == 404
    session.expire_all()
    still = await session.get(Recipient, theirs)
    assert still is not None and still.erased_at is None


async def test_the_services_refuse_the_roles_the_pages_refuse(
    app: Litestar, session: AsyncSession, tenant: TenantKey, client: httpx.AsyncClient
) -> None:
    """The rule is the services': whatever page or client calls them with a member's role."""
    await put_recipient(client, tenant, "kept")
    ring = crypto.keyring_for(app.state.settings)
    scope = {"tenant_id": tenant.tenant_id, "actor": "user:x"}
    refusals = [
        service.erase_recipient(
            session, mode="live", external_id="kept", role="developer", **scope
        ),
        suppressions.remove_suppression(
            session, mode="live", suppression_id=uuid.uuid4(), role="viewer", **scope
        ),
        providers.create_config(
            session,
            data=providers.ConfigInput(channel="email", provider="sandbox", name="x"),
            keyring=ring,
            role="viewer",
            **scope,
        ),
        providers.update_config(
            session,
            config_id=uuid.uuid4(),
            changes=providers.ConfigChanges(enabled=False),
            keyring=ring,
            role="viewer",
            **scope,
        ),
        providers.delete_config(session, config_id=uuid.uuid4(), role="viewer", **scope),
        providers.reset_breaker(
            session, config_id=uuid.uuid4(), breakers=app.state.breakers, role="viewer", **scope
        ),
        probe.send_test(
            session,
            mode="live",
            plan="free",
            config=ProviderConfig(),
            address="me@acme.example",
            keyring=ring,
            buckets=app.state.token_buckets,
            settings=app.state.settings,
            role="viewer",
            **scope,
        ),
        controls.set_kill_switch(session, channel="email", mode="pause", role="developer", **scope),
        controls.set_retry_policy(session, policy=RetryPolicy(), role="developer", **scope),
        controls.set_default_locale(session, locale="de", role="developer", **scope),
    ]
    for refusal in refusals:
        with pytest.raises(roles.RoleNotAllowed):
            await refusal
    await session.rollback()
    kept = await service.get_recipient(
        session, tenant_id=tenant.tenant_id, mode="live", external_id="kept"
    )
    assert kept is not None
    assert await controls.get_kill_switches(session, tenant_id=tenant.tenant_id) == {}
