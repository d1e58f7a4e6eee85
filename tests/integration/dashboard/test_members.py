"""Members, invitations, tenant switching and password resets, driven over HTTP as a browser.

Mail goes through a real SMTP server (aiosmtpd, the `mailbox` fixture); links are read from
the mails as a mail reader decodes them. Roles are checked on every write of every page
that exists (API keys and members): a viewer gets 403 whatever it sends, and the services
refuse the same roles when called directly.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from email import message_from_bytes, policy
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from argon2 import PasswordHasher
from litestar import Litestar
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.audit.models import AuditEntry
from app.auth import accounts, members, roles, verification
from app.auth.models import MemberInvite, Membership, PasswordReset, User
from app.auth.throttle import INVITES_PER_TENANT
from app.db import session_factory, utcnow
from app.main import create_app
from app.runtime import ServiceUrls
from app.tenants import plans
from app.tenants.models import Tenant
from tests.dashboard import (
    PASSWORD,
    browser,
    create_key,
    post_form,
    sign_in,
    sign_up,
    unique_email,
)
from tests.fakes import Mailbox
from tests.support import serving, settings_for

INVITE_LINK = re.compile(r"http://herald\.test/invite/\S+")
RESET_LINK = re.compile(r"http://herald\.test/password-reset/\S+")
NEW_PASSWORD = "a brand new passphrase"


@pytest.fixture
async def mailing_app(
    service_urls: ServiceUrls, mailbox: tuple[Mailbox, int]
) -> AsyncIterator[Litestar]:
    """The app mailing through the test's SMTP server, its links on http://herald.test."""
    _, port = mailbox
    settings = settings_for(
        service_urls.database_url,
        service_urls.redis_url,
        HERALD_SMTP_URL=f"smtp://127.0.0.1:{port}",
        HERALD_MAIL_FROM="Herald <accounts@herald.test>",
        HERALD_PUBLIC_URL="http://herald.test",
    )
    async with serving(create_app(settings)) as app:
        yield app


def mails_to(box: Mailbox, to: str) -> list[str]:
    """The plain-text bodies of the mails `to` received, oldest first."""
    bodies = []
    for envelope in box.received:
        if to not in envelope.rcpt_tos:
            continue
        mail = message_from_bytes(envelope.original_content or b"", policy=policy.default)
        assert mail["From"] == "Herald <accounts@herald.test>"
        body = mail.get_body(("plain",))
        assert body is not None
        bodies.append(body.get_content())
    return bodies


def link_in(box: Mailbox, to: str, pattern: re.Pattern[str]) -> str:
    """The path of the link in the newest mail to `to`."""
    bodies = mails_to(box, to)
    assert bodies, f"a mail to {to}"
    found = pattern.search(bodies[-1])
    assert found, bodies[-1]
    return found.group(0).removeprefix("http://herald.test")


async def add_member(session: AsyncSession, tenant_id: uuid.UUID, role: str, email: str) -> User:
    user = User(
        email=email, name=f"{role.title()} Example", password_hash=PasswordHasher().hash(PASSWORD)
    )
    session.add(user)
    await session.flush()
    session.add(Membership(user_id=user.id, tenant_id=tenant_id, role=role))
    await session.commit()
    return user


async def without_members_limit(session: AsyncSession, owner_email: str) -> None:
    """Put the owner's tenant on a plan of the configured file with no members limit, for
    the tests of the other bounds on invitations (tests/integration/dashboard/
    test_members_limit.py tests the limit)."""
    unlimited = next(name for name, plan in plans.catalogue().plans.items() if plan.members == 0)
    tenant_id = await tenant_of(session, owner_email)
    await session.execute(update(Tenant).where(Tenant.id == tenant_id).values(plan=unlimited))
    await session.commit()


async def user_by_email(session: AsyncSession, email: str) -> User:
    session.expire_all()
    user = await session.scalar(select(User).where(func.lower(User.email) == email.lower()))
    assert user is not None
    return user


async def tenant_of(session: AsyncSession, email: str) -> uuid.UUID:
    user = await user_by_email(session, email)
    return (await accounts.tenants_of(session, user_id=user.id))[0].tenant.id


async def owner_on(
    client: httpx.AsyncClient,
    mode: str,
    company: str = "Acme Ltd",
    *,
    verify: AsyncSession | None = None,
) -> str:
    """Sign up (an owner), switch the dashboard to `mode` data; the owner's e-mail. With a
    session in `verify`, the owner verifies their address (which mailed invites need)."""
    email = unique_email("owner")
    assert (await sign_up(client, email, company=company)).status_code == 303
    assert (await post_form(client, "/mode", {"mode": mode})).status_code == 303
    if verify is not None:
        user = await user_by_email(verify, email)
        link = await verification.issue_link(verify, user=user, public_url="http://herald.test")
        token = parse_qs(urlsplit(link).query)["token"][0]
        assert await verification.verify(verify, token=token) is not None
        await verify.commit()
    return email


async def invite(client: httpx.AsyncClient, email: str, role: str = "viewer") -> httpx.Response:
    return await post_form(client, "/members/invites", {"email": email, "role": role})


async def accept_as_new(
    client: httpx.AsyncClient, path: str, name: str = "Vic Viewer"
) -> httpx.Response:
    page = await client.get(path)
    assert page.status_code == 200 and "Create account and join" in page.text
    return await post_form(client, path, {"name": name, "password": PASSWORD})


async def test_owner_invites_a_viewer_who_joins_through_the_mailed_link(
    mailing_app: Litestar, mailbox: tuple[Mailbox, int], session: AsyncSession
) -> None:
    box, _ = mailbox
    invitee = unique_email("vic")
    async with browser(mailing_app) as owner, browser(mailing_app) as guest:
        owner_email = await owner_on(owner, "live", company="Invitational", verify=session)
        answer = await invite(owner, invitee)
        assert answer.status_code == 303
        assert answer.headers["location"] == "/members?notice=invited"
        listing = await owner.get("/members")
        assert invitee in listing.text and "Pending invitations" in listing.text
        body = mails_to(box, invitee)[-1]
        assert "Invitational" in body and "viewer" in body
        path = link_in(box, invitee, INVITE_LINK)
        # Only the token's digest is stored.
        token = path.rsplit("/", 1)[1]
        tenant_id = await tenant_of(session, owner_email)
        stored = await session.scalar(
            select(MemberInvite).where(MemberInvite.tenant_id == tenant_id)
        )
        assert stored is not None and token.encode() not in stored.token_hash

        # Opening the link twice uses nothing up (mail scanners fetch links).
        assert (await guest.get(path)).status_code == 200
        joined = await accept_as_new(guest, path)
        assert joined.status_code == 303 and joined.headers["location"] == "/overview"
        page = await guest.get("/members")
        assert page.status_code == 200
        assert "Invitational" in page.text and "role-viewer" in page.text
        assert 'action="/members/invites"' not in page.text  # viewers get no forms

        user = await user_by_email(session, invitee)
        assert user.email_verified_at is not None  # the mailed link proved the address
        role = await session.scalar(
            select(Membership.role).where(
                Membership.user_id == user.id, Membership.tenant_id == tenant_id
            )
        )
        assert role == "viewer"
        # Used once: the link no longer works, for anyone.
        again = await guest.get(path)
        assert again.status_code == 404 and "does not work" in again.text
        reused = await post_form(guest, path, {"name": "Eve", "password": PASSWORD})
        assert reused.status_code == 404
        actions = (
            await session.scalars(
                select(AuditEntry.action)
                .where(AuditEntry.tenant_id == tenant_id)
                .order_by(AuditEntry.seq)
            )
        ).all()
        assert actions[-2:] == ["member.invited", "member.joined"]
        listing = await owner.get("/members")
        assert "No pending invitations" in listing.text and invitee in listing.text


async def test_someone_with_an_account_signs_in_to_join_and_switches_tenants(
    mailing_app: Litestar, mailbox: tuple[Mailbox, int], session: AsyncSession
) -> None:
    box, _ = mailbox
    async with (
        browser(mailing_app) as owner,
        browser(mailing_app) as dev,
        browser(mailing_app) as stranger,
    ):
        await owner_on(owner, "live", company="Hosts Inc", verify=session)
        dev_email = await owner_on(dev, "test", company="Dev Own Co")
        stranger_email = await owner_on(stranger, "test", company="Elsewhere")
        await post_form(dev, "/signout", {})
        assert (await invite(owner, dev_email, "developer")).status_code == 303
        path = link_in(box, dev_email, INVITE_LINK)

        page = await dev.get(path)
        assert "Sign in and join" in page.text and 'name="name"' not in page.text
        wrong = await post_form(dev, path, {"password": "not the password"})
        assert wrong.status_code == 400
        assert (await dev.get(path)).status_code == 200  # a failed try uses nothing up
        joined = await post_form(dev, path, {"password": PASSWORD})
        assert joined.status_code == 303
        keys_page = await dev.get("/keys")
        assert "Hosts Inc" in keys_page.text and "Switch tenant" in keys_page.text
        assert "Dev Own Co" in keys_page.text  # listed in the switch

        own = await tenant_of(session, dev_email)
        switched = await post_form(dev, "/tenants/switch", {"tenant_id": str(own)})
        assert switched.status_code == 303
        page = await dev.get("/members")
        assert page.status_code == 200
        assert re.search(r'class="account-tenant">Dev Own Co<', page.text)
        # Another tenant (one the person does not belong to) is not found, and changes nothing.
        elsewhere = await tenant_of(session, stranger_email)
        refused = await post_form(dev, "/tenants/switch", {"tenant_id": str(elsewhere)})
        assert refused.status_code == 404
        assert (
            await post_form(dev, "/tenants/switch", {"tenant_id": "x" * 500})
        ).status_code == 422
        page = await dev.get("/members")
        assert re.search(r'class="account-tenant">Dev Own Co<', page.text)
        assert "Elsewhere" not in page.text
        # A person with one tenant gets no switch.
        assert "Switch tenant" not in (await stranger.get("/keys")).text


async def test_a_person_signed_in_as_the_invited_address_only_confirms(
    mailing_app: Litestar, mailbox: tuple[Mailbox, int], session: AsyncSession
) -> None:
    box, _ = mailbox
    async with browser(mailing_app) as owner, browser(mailing_app) as dev:
        await owner_on(owner, "live", company="Confirmers", verify=session)
        dev_email = await owner_on(dev, "test", company="Solo")
        await invite(owner, dev_email, "admin")
        path = link_in(box, dev_email, INVITE_LINK)
        page = await dev.get(path)
        assert "You are signed in as" in page.text and 'name="password"' not in page.text
        assert (await post_form(dev, path, {})).status_code == 303
        assert "Confirmers" in (await dev.get("/keys")).text


async def test_mailed_invites_wait_for_a_verified_owner(
    mailing_app: Litestar, mailbox: tuple[Mailbox, int], session: AsyncSession
) -> None:
    box, _ = mailbox
    invitee = unique_email("early")
    async with browser(mailing_app) as owner:
        await owner_on(owner, "live", company="Unverified Co")
        refused = await invite(owner, invitee)
        assert refused.status_code == 422 and "verified their e-mail" in refused.text
        assert mails_to(box, invitee) == []
        assert invitee not in (await owner.get("/members")).text


async def test_an_invite_made_on_test_data_goes_to_the_sandbox_not_the_mail(
    mailing_app: Litestar, mailbox: tuple[Mailbox, int], session: AsyncSession
) -> None:
    box, _ = mailbox
    invitee = unique_email("sandy")
    async with browser(mailing_app) as owner, browser(mailing_app) as guest:
        await owner_on(owner, "test", company="Sandbox Co")
        answer = await invite(owner, invitee, "developer")
        assert answer.status_code == 201
        assert "Invitation delivered to the sandbox" in answer.text
        assert mails_to(box, invitee) == []
        found = re.search(r'id="sandbox-link" href="([^"]+)"', answer.text)
        assert found
        path = found.group(1).removeprefix("http://herald.test")
        # Shown once: the page does not show it again.
        assert path not in (await owner.get("/members")).text
        assert (await accept_as_new(guest, path, "Sandy")).status_code == 303
        user = await user_by_email(session, invitee)
        assert user.email_verified_at is None  # nothing proved the address


async def test_reinviting_replaces_the_pending_invite_and_revoking_ends_it(
    mailing_app: Litestar, mailbox: tuple[Mailbox, int], session: AsyncSession
) -> None:
    box, _ = mailbox
    invitee = unique_email("twice")
    async with browser(mailing_app) as owner, browser(mailing_app) as guest:
        owner_email = await owner_on(owner, "live", verify=session)
        await invite(owner, invitee, "viewer")
        first = link_in(box, invitee, INVITE_LINK)
        await invite(owner, invitee, "admin")
        second = link_in(box, invitee, INVITE_LINK)
        assert first != second
        assert (await guest.get(first)).status_code == 404
        assert "as <strong>admin</strong>" in (await guest.get(second)).text
        tenant_id = await tenant_of(session, owner_email)
        pending = (
            await session.scalars(select(MemberInvite).where(MemberInvite.tenant_id == tenant_id))
        ).all()
        assert len(pending) == 1
        revoked = await post_form(owner, f"/members/invites/{pending[0].id}/revoke", {})
        assert revoked.status_code == 303
        assert (await guest.get(second)).status_code == 404
        again = await post_form(owner, f"/members/invites/{pending[0].id}/revoke", {})
        assert again.status_code == 404


async def test_an_expired_invite_does_not_work(
    mailing_app: Litestar, mailbox: tuple[Mailbox, int], session: AsyncSession
) -> None:
    box, _ = mailbox
    invitee = unique_email("late")
    async with browser(mailing_app) as owner, browser(mailing_app) as guest:
        owner_email = await owner_on(owner, "live", verify=session)
        await invite(owner, invitee)
        path = link_in(box, invitee, INVITE_LINK)
        tenant_id = await tenant_of(session, owner_email)
        await session.execute(
            update(MemberInvite)
            .where(MemberInvite.tenant_id == tenant_id)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
        await session.commit()
        assert (await guest.get(path)).status_code == 404
        refused = await post_form(guest, path, {"name": "Late", "password": PASSWORD})
        assert refused.status_code == 404
        assert "Expired" in (await owner.get("/members")).text
        session.expire_all()
        assert await session.scalar(select(User.id).where(User.email == invitee)) is None


async def test_invitations_are_bounded_and_checked(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    email = await owner_on(client, "test")
    await without_members_limit(session, email)
    bad = await invite(client, "not-an-address")
    assert bad.status_code == 422 and 'id="error-email"' in bad.text
    long = await invite(client, "a" * 400 + "@acme.example")
    assert long.status_code == 422
    bad_role = await invite(client, unique_email(), "emperor")
    assert bad_role.status_code == 422 and "Choose one of" in bad_role.text
    me = await invite(client, email.upper())
    assert me.status_code == 422 and "member already" in me.text
    for _ in range(members.MAX_PENDING_INVITES):
        assert (await invite(client, unique_email("many"))).status_code == 201
    full = await invite(client, unique_email("one-more"))
    assert full.status_code == 422 and "pending" in full.text


async def test_viewers_are_refused_every_write(
    app: Litestar, session: AsyncSession, client: httpx.AsyncClient
) -> None:
    """A viewer may read the keys and members pages, and every write of either page is a
    403, whatever the form holds; the services refuse the role too."""
    owner_email = await owner_on(client, "test")
    key = await create_key(client, "Backend")
    tenant_id = await tenant_of(session, owner_email)
    owner_id = (await user_by_email(session, owner_email)).id
    await invite(client, unique_email("pending"))
    pending = await session.scalar(
        select(MemberInvite.id).where(MemberInvite.tenant_id == tenant_id)
    )
    viewer_email = unique_email("viewer")
    await add_member(session, tenant_id, "viewer", viewer_email)
    async with browser(app) as viewer:
        assert (await sign_in(viewer, viewer_email, PASSWORD)).status_code == 303
        keys_page = await viewer.get("/keys")
        assert keys_page.status_code == 200 and "Revoke" not in keys_page.text
        members_page = await viewer.get("/members")
        assert members_page.status_code == 200 and owner_email in members_page.text
        assert "<form" not in members_page.text.split('id="members-table"')[1]
        writes = {
            "/keys": {"name": "x", "mode": "test", "scopes": "send"},
            f"/keys/{key.key_id}/revoke": {},
            "/members/invites": {"email": unique_email(), "role": "owner"},
            f"/members/{owner_id}/role": {"role": "viewer"},
            f"/members/{owner_id}/remove": {},
            f"/members/invites/{pending}/revoke": {},
        }
        for path, fields in writes.items():
            answer = await post_form(viewer, path, fields)
            assert answer.status_code == 403, path
            assert "(viewer)" in answer.text, path
    # Nothing changed.
    session.expire_all()
    assert (
        await session.scalar(select(Membership.role).where(Membership.user_id == owner_id))
        == "owner"
    )
    assert await session.scalar(select(MemberInvite.id).where(MemberInvite.id == pending))


@pytest.mark.parametrize("role", ["admin", "developer", "viewer"])
async def test_only_owners_manage_members(
    app: Litestar, session: AsyncSession, client: httpx.AsyncClient, role: str
) -> None:
    owner_email = await owner_on(client, "test")
    tenant_id = await tenant_of(session, owner_email)
    owner_id = (await user_by_email(session, owner_email)).id
    email = unique_email(role)
    await add_member(session, tenant_id, role, email)
    async with browser(app) as someone:
        await sign_in(someone, email, PASSWORD)
        page = await someone.get("/members")
        assert page.status_code == 200 and "only owners can invite" in page.text
        refused = await post_form(someone, f"/members/{owner_id}/role", {"role": role})
        assert refused.status_code == 403
        refused = await post_form(someone, "/members/invites", {"email": unique_email()})
        assert refused.status_code == 403
    # The service refuses the role, whatever page or client calls it.
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: members.remove_member(
            session, tenant_id=tenant_id, user_id=owner_id, actor="t", acting_role=role
        ),
        lambda: members.change_role(
            session, tenant_id=tenant_id, user_id=owner_id, role=role, actor="t", acting_role=role
        ),
        lambda: members.revoke_invite(
            session, tenant_id=tenant_id, invite_id=uuid.uuid4(), actor="t", acting_role=role
        ),
        lambda: members.invite(
            session,
            app.state.account_guards.throttle,
            tenant_id=tenant_id,
            email=unique_email(),
            role="owner",
            delivery=members.SANDBOX,
            actor="t",
            public_url="http://herald.test",
            acting_role=role,
        ),
    ]
    for call in calls:
        with pytest.raises(roles.RoleNotAllowed):
            await call()
    await session.rollback()


async def test_a_tenant_keeps_at_least_one_owner(
    app: Litestar, session: AsyncSession, client: httpx.AsyncClient
) -> None:
    owner_email = await owner_on(client, "test")
    tenant_id = await tenant_of(session, owner_email)
    owner_id = (await user_by_email(session, owner_email)).id
    bad = await post_form(client, f"/members/{owner_id}/role", {"role": "emperor" * 100})
    assert bad.status_code == 422 and "role: choose one of" in bad.text
    demoted = await post_form(client, f"/members/{owner_id}/role", {"role": "admin"})
    assert demoted.status_code == 409 and "at least one owner" in demoted.text
    removed = await post_form(client, f"/members/{owner_id}/remove", {})
    assert removed.status_code == 409
    with pytest.raises(members.LastOwner):
        await members.change_role(
            session, tenant_id=tenant_id, user_id=owner_id, role="viewer", actor="t"
        )
    await session.rollback()

    # With a second owner, the first may step down, and the second may not then be demoted.
    second_email = unique_email("second")
    second_id = (await add_member(session, tenant_id, "viewer", second_email)).id
    assert (
        await post_form(client, f"/members/{second_id}/role", {"role": "owner"})
    ).status_code == 303
    stepped = await post_form(client, f"/members/{owner_id}/role", {"role": "developer"})
    assert stepped.status_code == 303
    assert (
        await post_form(client, f"/members/{owner_id}/role", {"role": "owner"})
    ).status_code == 403
    async with browser(app) as other:
        await sign_in(other, second_email, PASSWORD)
        alone = await post_form(other, f"/members/{second_id}/remove", {})
        assert alone.status_code == 409
        # Removing the developer works; their next request finds no session.
        gone = await post_form(other, f"/members/{owner_id}/remove", {})
        assert gone.status_code == 303
    assert (await client.get("/members")).status_code == 303
    actions = (
        await session.scalars(
            select(AuditEntry.action)
            .where(AuditEntry.tenant_id == tenant_id)
            .order_by(AuditEntry.seq)
        )
    ).all()
    assert actions[-3:] == ["member.role_changed", "member.role_changed", "member.removed"]


async def test_other_tenants_members_and_invites_are_not_found(
    app: Litestar, session: AsyncSession
) -> None:
    async with browser(app) as ours, browser(app) as theirs:
        await owner_on(ours, "test", company="Ours")
        their_email = await owner_on(theirs, "test", company="Theirs")
        await invite(theirs, unique_email("their-invitee"))
        their_tenant = await tenant_of(session, their_email)
        their_owner = await user_by_email(session, their_email)
        their_invite = await session.scalar(
            select(MemberInvite.id).where(MemberInvite.tenant_id == their_tenant)
        )
        for path, fields in {
            f"/members/{their_owner.id}/role": {"role": "viewer"},
            f"/members/{their_owner.id}/remove": {},
            f"/members/invites/{their_invite}/revoke": {},
        }.items():
            assert (await post_form(ours, path, fields)).status_code == 404, path
        page = await ours.get("/members")
        assert their_email not in page.text and "their-invitee" not in page.text


async def test_mailed_invitations_are_limited_per_tenant(
    mailing_app: Litestar, mailbox: tuple[Mailbox, int], session: AsyncSession
) -> None:
    box, _ = mailbox
    limit = INVITES_PER_TENANT.burst
    async with browser(mailing_app) as owner:
        await without_members_limit(session, await owner_on(owner, "live", verify=session))
        for _ in range(limit):
            assert (await invite(owner, unique_email("mailed"))).status_code == 303
        over = await invite(owner, unique_email("one-too-many"))
        assert over.status_code == 429 and int(over.headers["retry-after"]) >= 1
        assert "Too many attempts" in over.text
    assert not any("one-too-many" in to for e in box.received for to in e.rcpt_tos)


async def test_two_owners_demoting_each_other_at_once_leave_one_owner(
    engine: AsyncEngine, session: AsyncSession, client: httpx.AsyncClient
) -> None:
    first_email = await owner_on(client, "test")
    tenant_id = await tenant_of(session, first_email)
    first = (await user_by_email(session, first_email)).id
    second = (await add_member(session, tenant_id, "owner", unique_email("co-owner"))).id
    sessions = session_factory(engine)

    async def demote(user_id: uuid.UUID) -> str:
        async with sessions() as own:
            try:
                await members.change_role(
                    own, tenant_id=tenant_id, user_id=user_id, role="viewer", actor="t"
                )
            except members.LastOwner:
                return "refused"
            await own.commit()
            return "demoted"

    outcomes = await asyncio.gather(demote(first), demote(second))
    assert sorted(outcomes) == ["demoted", "refused"]
    session.expire_all()
    owners = await session.scalar(
        select(func.count()).where(Membership.tenant_id == tenant_id, Membership.role == "owner")
    )
    assert owners == 1


async def test_every_new_form_needs_its_csrf_token(app: Litestar, session: AsyncSession) -> None:
    async with browser(app) as owner:
        email = await owner_on(owner, "test")
        user = await user_by_email(session, email)
        tenant_id = await tenant_of(session, email)
        paths = [
            "/members/invites",
            f"/members/{user.id}/role",
            f"/members/{user.id}/remove",
            f"/members/invites/{uuid.uuid4()}/revoke",
            "/tenants/switch",
            "/invite/some-token",
            "/password-reset",
            "/password-reset/some-token",
        ]
        for path in paths:
            answer = await owner.post(path, data={"role": "viewer", "tenant_id": str(tenant_id)})
            assert answer.status_code == 403, path
            assert "This form has expired" in answer.text, path
            forged = await owner.post(path, data={"_csrf_token": "1.forged"})
            assert forged.status_code == 403, path


async def test_password_reset_through_the_mailed_link(
    mailing_app: Litestar, mailbox: tuple[Mailbox, int], session: AsyncSession
) -> None:
    box, _ = mailbox
    async with (
        browser(mailing_app) as first,
        browser(mailing_app) as second,
        browser(mailing_app) as forgetful,
    ):
        email = await owner_on(first, "test")
        assert (await sign_in(second, email, PASSWORD)).status_code == 303
        assert (await second.get("/members")).status_code == 200

        asked = await post_form(forgetful, "/password-reset", {"email": email})
        unknown = await post_form(forgetful, "/password-reset", {"email": unique_email("nobody")})
        assert asked.status_code == unknown.status_code == 200
        answer = re.compile(r'id="reset-sent">If an account uses <strong>[^<]+</strong>')
        assert answer.search(asked.text) and answer.search(unknown.text)
        path = link_in(box, email, RESET_LINK)
        assert len(mails_to(box, email)) == 1 + 1  # the sign-up's verification, then this

        # Opening the link shows a form and uses nothing up.
        for _ in range(2):
            form = await forgetful.get(path)
            assert form.status_code == 200 and "Choose a new password" in form.text
        short = await post_form(forgetful, path, {"password": "short"})
        assert short.status_code == 422 and 'id="error-password"' in short.text
        done = await post_form(forgetful, path, {"password": NEW_PASSWORD})
        assert done.status_code == 200 and "Password changed" in done.text

        # Every session of the account ended; the old password no longer works.
        assert (await first.get("/members")).status_code == 303
        assert (await second.get("/members")).status_code == 303
        assert (await sign_in(second, email, PASSWORD)).status_code == 400
        assert (await sign_in(second, email, NEW_PASSWORD)).status_code == 303
        # Single use.
        assert (await forgetful.get(path)).status_code == 400
        again = await post_form(forgetful, path, {"password": "yet another passphrase"})
        assert again.status_code == 400 and "does not work" in again.text


async def test_an_expired_reset_link_does_not_work(
    mailing_app: Litestar, mailbox: tuple[Mailbox, int], session: AsyncSession
) -> None:
    box, _ = mailbox
    async with browser(mailing_app) as person:
        email = await owner_on(person, "test")
        await post_form(person, "/signout", {})
        await post_form(person, "/password-reset", {"email": email})
        path = link_in(box, email, RESET_LINK)
        user = await user_by_email(session, email)
        await session.execute(
            update(PasswordReset)
            .where(PasswordReset.user_id == user.id)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
        await session.commit()
        assert (await person.get(path)).status_code == 400
        refused = await post_form(person, path, {"password": NEW_PASSWORD})
        assert refused.status_code == 400
        assert (await sign_in(person, email, PASSWORD)).status_code == 303


async def test_reset_requests_are_limited_and_checked(
    mailing_app: Litestar, mailbox: tuple[Mailbox, int]
) -> None:
    box, _ = mailbox
    email = unique_email("flood")  # no account: the limit holds all the same
    async with browser(mailing_app) as person:
        bad = await post_form(person, "/password-reset", {"email": "nope"})
        assert bad.status_code == 422 and 'id="error-email"' in bad.text
        too_long = await post_form(person, "/password-reset", {"email": "a" * 5000})
        assert too_long.status_code == 422
        answers = [
            (await post_form(person, "/password-reset", {"email": email})).status_code
            for _ in range(6)
        ]
        assert answers == [200] * 5 + [429]
    assert mails_to(box, email) == []
    async with browser(mailing_app) as page:
        sign_in_page = await page.get("/signin")
        assert 'href="/password-reset"' in sign_in_page.text
        assert (await page.get("/password-reset/" + "x" * 300)).status_code == 400
        assert (await page.get("/invite/" + "x" * 300)).status_code == 404
