"""The plan's members limit, driven over HTTP as a browser (and, for the race, through the
service with two sessions at once): inviting, accepting an invite and joining by single
sign-on each stop at the limit, pending invites hold a seat, a downgrade removes nobody,
and two acceptances racing for the last seat let exactly one in.

The plans come from a plans file of the test's own (HERALD_PLANS_FILE), the shipped plans
plus a few that differ only by `members`; a tenant changes plan by its `plan` column, as
billing's settle changes it.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from litestar import Litestar
from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.audit.models import AuditEntry
from app.auth import members
from app.auth.accounts import Client, Guards
from app.auth.models import MemberInvite, Membership, User
from app.auth.sso import oidc
from app.db import session_factory
from app.main import create_app
from app.runtime import ServiceUrls
from app.tenants.models import Tenant
from tests.dashboard import PASSWORD, browser, post_form, sign_up, unique_email
from tests.integration.dashboard.test_members import (
    accept_as_new,
    add_member,
    invite,
    owner_on,
    tenant_of,
)
from tests.integration.dashboard.test_sso import (
    PUBLIC_URL,
    Owner,
    configure,
    failure,
    new_domain,
    query,
    start_sso,
)
from tests.oidc_provider import TokenForge, token_forge
from tests.support import plans_with, serving, settings_for

RATES = """\
api_rate = 25
api_burst = 100
send_rate = 50
send_burst = 500
render_ms_rate = 200
render_ms_burst = 5000
log_retention_days = 7
"""
SIZES = {"members-two": 2, "members-three": 3, "members-four": 4, "members-none": 0}
SANDBOX_LINK = re.compile(r'id="sandbox-link" href="[^"]*?(/invite/[^"]+)"')


@pytest.fixture(scope="module", autouse=True)
def member_plans(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    extra = "".join(f"\n[plans.{name}]\n{RATES}members = {n}\n" for name, n in SIZES.items())
    with plans_with(tmp_path_factory.mktemp("plans"), extra):
        yield


async def on_plan(session: AsyncSession, tenant_id: uuid.UUID, plan: str) -> None:
    await session.execute(update(Tenant).where(Tenant.id == tenant_id).values(plan=plan))
    await session.commit()


async def count_members(session: AsyncSession, tenant_id: uuid.UUID) -> int:
    session.expire_all()
    found = await session.scalar(select(func.count()).where(Membership.tenant_id == tenant_id))
    return found or 0


async def pending_invites(session: AsyncSession, tenant_id: uuid.UUID) -> list[str]:
    found = await session.scalars(
        select(MemberInvite.email).where(MemberInvite.tenant_id == tenant_id)
    )
    return sorted(found.all())


async def sandbox_invite(owner: httpx.AsyncClient, email: str) -> str:
    """Invite `email` from test data; the link's path (shown once, in the sandbox)."""
    answer = await invite(owner, email)
    assert answer.status_code == 201, answer.text
    found = SANDBOX_LINK.search(answer.text)
    assert found
    return found.group(1)


async def team(
    owner: httpx.AsyncClient, session: AsyncSession, plan: str, others: int
) -> uuid.UUID:
    """The owner's tenant on `plan` with `others` members besides the owner (test data)."""
    tenant_id = await tenant_of(session, await owner_on(owner, "test"))
    for _ in range(others):
        await add_member(session, tenant_id, "developer", unique_email("mate"))
    await on_plan(session, tenant_id, plan)
    return tenant_id


def form_error(page: httpx.Response) -> str:
    found = re.search(r'id="error-email">([^<]*)<', page.text)
    return found.group(1) if found else ""


async def test_an_invite_is_refused_when_the_members_fill_the_plan(
    app: Litestar, session: AsyncSession
) -> None:
    async with browser(app) as owner:
        tenant_id = await team(owner, session, "members-three", others=2)
        listing = await owner.get("/members")
        assert "3 of 3 members" in listing.text
        # Full already: the page says so before anyone types an address.
        assert 'id="members-limit-billing"' in listing.text

        refused = await invite(owner, unique_email("fourth"))
        assert refused.status_code == 422
        assert form_error(refused) == (
            "The members-three plan allows 3 members: this tenant has 3. Upgrade the plan on "
            "the billing page, or remove a member or revoke an invitation, to invite someone "
            "else."
        )
        assert '<a href="/billing" id="members-limit-billing">' in refused.text
        assert 'id="sandbox-mail"' not in refused.text
    assert await pending_invites(session, tenant_id) == []
    invited = await session.scalar(
        select(func.count()).where(
            AuditEntry.tenant_id == tenant_id, AuditEntry.action == "member.invited"
        )
    )
    assert invited == 0


async def test_a_pending_invite_holds_a_seat(app: Litestar, session: AsyncSession) -> None:
    async with browser(app) as owner:
        tenant_id = await team(owner, session, "members-three", others=1)
        pending = unique_email("pending")
        await sandbox_invite(owner, pending)
        assert "2 of 3 members" in (await owner.get("/members")).text

        refused = await invite(owner, unique_email("third"))
        assert refused.status_code == 422
        assert "this tenant has 2 and 1 invitation pending" in form_error(refused)
        # Inviting the pending address again replaces its invite, in its own seat.
        await sandbox_invite(owner, pending)
        assert await pending_invites(session, tenant_id) == [pending]

        # Revoking the invite frees its seat.
        [invite_id] = await session.scalars(
            select(MemberInvite.id).where(MemberInvite.tenant_id == tenant_id)
        )
        revoked = await post_form(owner, f"/members/invites/{invite_id}/revoke", {})
        assert revoked.status_code == 303
        third = unique_email("third")
        await sandbox_invite(owner, third)
        assert await pending_invites(session, tenant_id) == [third]


async def test_a_plan_of_no_members_limit_admits_everyone(
    app: Litestar, session: AsyncSession
) -> None:
    async with browser(app) as owner:
        tenant_id = await team(owner, session, "members-none", others=4)
        invited = [unique_email("many") for _ in range(4)]
        for email in invited:
            await sandbox_invite(owner, email)
        listing = await owner.get("/members")
        assert "5 members, no limit" in listing.text
        assert 'id="members-limit-billing"' not in listing.text
    assert await pending_invites(session, tenant_id) == sorted(invited)


async def test_a_downgrade_refuses_an_acceptance_and_keeps_the_invite_and_the_members(
    app: Litestar, session: AsyncSession
) -> None:
    async with browser(app) as owner, browser(app) as guest:
        tenant_id = await team(owner, session, "members-four", others=2)
        invitee = unique_email("late")
        path = await sandbox_invite(owner, invitee)  # 3 members + 1 invite: the 4 seats
        await on_plan(session, tenant_id, "members-two")  # downgraded below the members

        # Nobody is removed; the page shows the tenant over its limit, and no invite passes.
        assert await count_members(session, tenant_id) == 3
        assert "3 of 2 members" in (await owner.get("/members")).text
        assert (await invite(owner, unique_email("another"))).status_code == 422

        # The link says so before asking for anything, and an acceptance is refused.
        opened = await guest.get(path)
        assert opened.status_code == 409
        assert 'id="accept-form"' not in opened.text
        assert "on the members-two plan, which allows 2 members, and has 3 already" in (
            opened.text.replace("&#39;", "'")
        )
        refused = await post_form(guest, path, {"name": "Late Comer", "password": PASSWORD})
        assert refused.status_code == 409
        assert "members-two plan" in refused.text and "still works until" in refused.text
        assert await count_members(session, tenant_id) == 3
        assert await session.scalar(select(User.id).where(User.email == invitee)) is None
        assert await pending_invites(session, tenant_id) == [invitee]

        # Back on a plan with room, the same link works.
        await on_plan(session, tenant_id, "members-four")
        joined = await accept_as_new(guest, path, "Late Comer")
        assert joined.status_code == 303 and joined.headers["location"] == "/overview"
    assert await count_members(session, tenant_id) == 4
    assert await pending_invites(session, tenant_id) == []


async def test_an_account_holder_is_refused_alike_until_a_member_leaves(
    app: Litestar, session: AsyncSession
) -> None:
    async with browser(app) as owner, browser(app) as guest:
        tenant_id = await team(owner, session, "members-three", others=1)
        holder = unique_email("holder")
        assert (await sign_up(guest, holder, company="Their own")).status_code == 303
        path = await sandbox_invite(owner, holder)
        leaver = (await add_member(session, tenant_id, "viewer", unique_email("leaver"))).id

        refused = await post_form(guest, path, {"password": PASSWORD})
        assert refused.status_code == 409 and "members-three plan" in refused.text
        assert await count_members(session, tenant_id) == 3

        removed = await post_form(owner, f"/members/{leaver}/remove", {})
        assert removed.status_code == 303
        joined = await post_form(guest, path, {"password": PASSWORD})
        assert joined.status_code == 303
    assert await count_members(session, tenant_id) == 3


async def test_two_acceptances_racing_for_the_last_seat_let_exactly_one_in(
    app: Litestar, engine: AsyncEngine, session: AsyncSession
) -> None:
    async with browser(app) as owner:
        tenant_id = await team(owner, session, "members-four", others=1)
        first, second = unique_email("first"), unique_email("second")
        links = [await sandbox_invite(owner, email) for email in (first, second)]
    await on_plan(session, tenant_id, "members-three")  # 2 members, 2 invites, 1 seat
    tokens = [link.rsplit("/", 1)[1] for link in links]
    guards: Guards = app.state.account_guards
    sessions = session_factory(engine)

    async def accept(token: str, n: int) -> str:
        async with sessions() as own:
            try:
                await members.accept_as_new_person(
                    own,
                    guards,
                    Client(f"198.51.100.{n}/32"),
                    token=token,
                    name=f"Racer {n}",
                    password=PASSWORD,
                )
            except members.MembersLimitReached:
                await own.rollback()
                return "refused"
            await own.commit()
            return "joined"

    async def waiting_on_locks() -> int:
        async with sessions() as probe:
            found = await probe.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock'"
                )
            )
            return int(found or 0)

    # The tenant row is held while both accept: both pass the early check (a seat is left)
    # and then queue on the row, so the race is decided under the lock, not by timing.
    async with sessions() as holder:
        await holder.execute(select(Tenant.id).where(Tenant.id == tenant_id).with_for_update())
        racers = [asyncio.create_task(accept(token, n)) for n, token in enumerate(tokens)]
        while True:  # until both queue on the row (or, were nothing locking, both finish)
            if await waiting_on_locks() >= 2 or all(task.done() for task in racers):
                break
            await asyncio.sleep(0.02)
        await holder.commit()
    outcomes = await asyncio.gather(*racers)

    assert sorted(outcomes) == ["joined", "refused"]
    assert await count_members(session, tenant_id) == 3
    # The refused one's invite is still there, for a seat that frees up later.
    joined = {first, second} & set(
        (
            await session.scalars(
                select(User.email)
                .join(Membership, Membership.user_id == User.id)
                .where(Membership.tenant_id == tenant_id)
            )
        ).all()
    )
    assert len(joined) == 1
    assert await pending_invites(session, tenant_id) == sorted({first, second} - joined)


# ---- single sign-on ------------------------------------------------------------------------


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
def forge() -> Iterator[TokenForge]:
    with token_forge() as provider:
        yield provider


async def sso_join(app: Litestar, forge: TokenForge, email: str) -> httpx.Response:
    """Sign `email` in through the forge (an honest provider's token); Herald's answer."""
    async with browser(app) as person:
        started = await start_sso(person, email)
        assert started.status_code == 303, started.text
        asked = query(started.headers["location"])
        forge.next_id_token = forge.id_token(nonce=asked["nonce"], audience="herald", email=email)
        return await person.get(
            "/sso/callback", params={"code": "the-code", "state": asked["state"]}
        )


async def test_joining_by_single_sign_on_stops_at_the_limit(
    sso_app: Litestar, forge: TokenForge, session: AsyncSession
) -> None:
    oidc.providers.clear()
    domain = new_domain()
    ida = f"ida@{domain}"
    async with browser(sso_app) as client:
        email = f"owner@{domain}"
        assert (await sign_up(client, email, company="Initrode")).status_code == 303
        tenant_id = await tenant_of(session, email)
        owner = Owner(client, email, domain, tenant_id, "Initrode")
        assert (await configure(owner, forge.issuer)).status_code == 303
        await add_member(session, tenant_id, "developer", unique_email("mate"))
        await on_plan(session, tenant_id, "members-three")
        assert (await post_form(client, "/mode", {"mode": "test"})).status_code == 303
        await sandbox_invite(client, ida)  # 2 members and ida's invite: the 3 seats

    # Someone of the domain with no invite: no seat for them.
    refused = await sso_join(sso_app, forge, f"gus@{domain}")
    assert refused.status_code == 400
    assert failure(refused) == (
        f"Initrode is on the members-three plan, which allows 3 members, and has 2 (and 1 "
        f"invitation pending) already, so gus@{domain} cannot join it now. Ask one of its "
        "owners to upgrade the plan or to remove a member."
    )
    assert await session.scalar(select(User.id).where(User.email == f"gus@{domain}")) is None
    assert await count_members(session, tenant_id) == 2

    # Ida signs in instead of opening her link: she takes her invite's seat, and the invite
    # is done with.
    arrived = await sso_join(sso_app, forge, ida)
    assert arrived.status_code == 303, failure(arrived)
    assert await count_members(session, tenant_id) == 3
    assert await pending_invites(session, tenant_id) == []

    # At the limit, nobody else joins by signing in; members already in still do.
    refused = await sso_join(sso_app, forge, f"hal@{domain}")
    assert refused.status_code == 400 and "members-three plan" in failure(refused)
    assert await count_members(session, tenant_id) == 3
    again = await sso_join(sso_app, forge, ida)
    assert again.status_code == 303, failure(again)
