"""The settings page over HTTP: kill switches, retry policy, default locale and what a
broadcast larger than the quota left does; each change reaches the tenant's stored controls
(what delivery reads), is audited, and is refused to roles below admin, without a CSRF
token, and when out of bounds."""

from __future__ import annotations

from litestar import Litestar
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.models import AuditEntry
from app.tenants import delivery_controls as controls
from tests.dashboard import post_form
from tests.integration.dashboard.people import signed_in
from tests.support import TenantKey


async def test_page_shows_every_channel_and_the_defaults(
    app: Litestar, session: AsyncSession, tenant: TenantKey
) -> None:
    async with signed_in(app, session, tenant.tenant_id, "viewer") as viewer:
        page = await viewer.get("/settings")
        assert page.status_code == 200
        for channel in ("email", "sms", "push", "webhook", "inbox"):
            assert f'id="switch-{channel}"' in page.text
        assert 'value="8"' in page.text and 'value="24"' in page.text  # the default policy
        assert "Apply</button>" not in page.text and "Save retry policy" not in page.text


async def test_kill_switch_takes_effect(
    app: Litestar, session: AsyncSession, tenant: TenantKey
) -> None:
    async with signed_in(app, session, tenant.tenant_id, "admin") as admin:
        paused = await post_form(admin, "/settings/kill-switches/email", {"mode": "pause"})
        assert paused.status_code == 303 and paused.headers["location"] == "/settings?notice=switch"
        session.expire_all()
        assert await controls.get_kill_switches(session, tenant_id=tenant.tenant_id) == {
            "email": "pause"
        }
        page = (await admin.get("/settings")).text
        assert 'class="switch-state state-pause"' in page

        await post_form(admin, "/settings/kill-switches/sms", {"mode": "drop_noncritical"})
        await post_form(admin, "/settings/kill-switches/email", {"mode": "off"})
        session.expire_all()
        assert await controls.get_kill_switches(session, tenant_id=tenant.tenant_id) == {
            "sms": "drop_noncritical"
        }

        bad = await post_form(admin, "/settings/kill-switches/sms", {"mode": "explode"})
        assert bad.status_code == 422 and "Choose sending, paused or critical only" in bad.text
        unknown = await post_form(admin, "/settings/kill-switches/pigeon", {"mode": "pause"})
        assert unknown.status_code == 404
    actions = list(
        await session.scalars(
            select(AuditEntry.details)
            .where(
                AuditEntry.tenant_id == tenant.tenant_id, AuditEntry.action == "tenant.kill_switch"
            )
            .order_by(AuditEntry.seq)
        )
    )
    assert [a["mode"] for a in actions] == ["pause", "drop_noncritical", "off"]


async def test_retry_policy_and_locale_within_bounds(
    app: Litestar, session: AsyncSession, tenant: TenantKey
) -> None:
    async with signed_in(app, session, tenant.tenant_id, "owner") as owner:
        saved = await post_form(
            owner, "/settings/retry-policy", {"max_attempts": "5", "window_hours": "12.5"}
        )
        assert saved.status_code == 303
        session.expire_all()
        policy = await controls.get_retry_policy(session, tenant_id=tenant.tenant_id)
        assert (policy.max_attempts, policy.window_hours) == (5, 12.5)

        for fields, named in (
            ({"max_attempts": "0", "window_hours": "24"}, "max_attempts"),
            ({"max_attempts": "21", "window_hours": "24"}, "max_attempts"),
            ({"max_attempts": "x", "window_hours": "24"}, "max_attempts"),
            ({"max_attempts": "8", "window_hours": "73"}, "window_hours"),
            ({"max_attempts": "8", "window_hours": "nan"}, "window_hours"),
            ({"max_attempts": "9" * 5000, "window_hours": "24"}, "max_attempts"),
        ):
            refused = await post_form(owner, "/settings/retry-policy", fields)
            assert refused.status_code == 422, fields
            error = refused.text.split(f'id="field-{named}"', 1)[1].split("</div>", 1)[0]
            assert 'class="field-error"' in error, fields
        session.expire_all()
        policy = await controls.get_retry_policy(session, tenant_id=tenant.tenant_id)
        assert (policy.max_attempts, policy.window_hours) == (5, 12.5)

        assert (
            await post_form(owner, "/settings/default-locale", {"default_locale": "fr_ca"})
        ).status_code == 303
        session.expire_all()
        assert await controls.get_default_locale(session, tenant_id=tenant.tenant_id) == "fr-CA"
        bad = await post_form(owner, "/settings/default-locale", {"default_locale": "x" * 500})
        assert bad.status_code == 422
        cleared = await post_form(owner, "/settings/default-locale", {"default_locale": ""})
        assert cleared.status_code == 303
        session.expire_all()
        assert await controls.get_default_locale(session, tenant_id=tenant.tenant_id) is None


async def test_every_settings_post_refuses_viewers_developers_and_missing_csrf(
    app: Litestar, session: AsyncSession, tenant: TenantKey
) -> None:
    posts = (
        ("/settings/kill-switches/email", {"mode": "pause"}),
        ("/settings/retry-policy", {"max_attempts": "3", "window_hours": "2"}),
        ("/settings/default-locale", {"default_locale": "de"}),
        ("/settings/on-quota-exceeded", {"on_quota_exceeded": "refuse"}),
    )
    for role in ("viewer", "developer"):
        async with signed_in(app, session, tenant.tenant_id, role) as member:
            for path, fields in posts:
                answer = await post_form(member, path, fields)
                assert answer.status_code == 403, (role, path)
                assert "cannot change the tenant" in answer.text
    async with signed_in(app, session, tenant.tenant_id, "admin") as admin:
        for path, fields in posts:
            assert (await admin.post(path, data=fields)).status_code == 403, path
    session.expire_all()
    assert await controls.get_kill_switches(session, tenant_id=tenant.tenant_id) == {}
    policy = await controls.get_retry_policy(session, tenant_id=tenant.tenant_id)
    assert policy.max_attempts == 8
    assert await controls.get_default_locale(session, tenant_id=tenant.tenant_id) is None
    assert (
        await controls.get_on_quota_exceeded(session, tenant_id=tenant.tenant_id) == "send_partial"
    )


async def test_a_broadcast_over_quota_is_sent_in_part_or_refused_as_chosen(
    app: Litestar, session: AsyncSession, tenant: TenantKey
) -> None:
    async with signed_in(app, session, tenant.tenant_id, "viewer") as viewer:
        form = (await viewer.get("/settings")).text.split('id="on-quota-exceeded"', 1)[1]
        form = form.split("</form>", 1)[0]
        assert 'value="send_partial" checked disabled' in form  # the default, read only
        assert "<button" not in form
    async with signed_in(app, session, tenant.tenant_id, "admin") as admin:
        saved = await post_form(
            admin, "/settings/on-quota-exceeded", {"on_quota_exceeded": "refuse"}
        )
        assert saved.status_code == 303
        assert saved.headers["location"] == "/settings?notice=quota"
        session.expire_all()
        assert await controls.get_on_quota_exceeded(session, tenant_id=tenant.tenant_id) == "refuse"
        delivery = await controls.get_delivery_settings(session, tenant_id=tenant.tenant_id)
        assert delivery.on_quota_exceeded == "refuse"  # what dispatch reads
        page = (await admin.get("/settings?notice=quota")).text
        assert 'value="refuse" checked>' in page and "broadcasts dispatched from now on" in page

        bad = await post_form(admin, "/settings/on-quota-exceeded", {"on_quota_exceeded": "half"})
        assert bad.status_code == 422 and "Choose to send up to the quota or to refuse" in bad.text
        session.expire_all()
        assert await controls.get_on_quota_exceeded(session, tenant_id=tenant.tenant_id) == "refuse"
    [entry] = await session.scalars(
        select(AuditEntry.details).where(
            AuditEntry.tenant_id == tenant.tenant_id,
            AuditEntry.action == "tenant.on_quota_exceeded",
        )
    )
    assert entry == {"on_quota_exceeded": "refuse", "previous": "send_partial"}


async def test_settings_are_the_members_own_tenants(
    app: Litestar, session: AsyncSession, tenant: TenantKey, other_tenant: TenantKey
) -> None:
    async with signed_in(app, session, other_tenant.tenant_id, "owner") as theirs:
        await post_form(theirs, "/settings/kill-switches/push", {"mode": "pause"})
    async with signed_in(app, session, tenant.tenant_id, "owner") as owner:
        assert 'class="switch-state state-pause"' not in (await owner.get("/settings")).text
    session.expire_all()
    assert await controls.get_kill_switches(session, tenant_id=tenant.tenant_id) == {}
    assert await controls.get_kill_switches(session, tenant_id=other_tenant.tenant_id) == {
        "push": "pause"
    }
