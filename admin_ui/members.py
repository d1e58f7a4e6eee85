"""The members page, the invitation links it sends, and the top bar's tenant switch.

/members lists the tenant's people and their roles, and the invites not accepted yet. Every
member may look; only owners see (and may use) the forms that invite, change a role,
remove someone or revoke an invite: the page asks `require(member, "manage_members")`
before reading a form, and app/auth/members.py refuses any other role again, keeps a last
owner, and writes the audit log.

An invite made while the owner works on live data is mailed through Herald's system mailer;
made on test data it is not mailed but shown here, once, as the sandbox's copy of the mail
(app/auth/members.py says why it is not put in the test delivery log).

The page shows the members against the plan's limit ("N of M members"); an invite past
the limit is refused as a form error naming the plan and the limit, with a link to the
billing page.

/invite/{token} is the link's page, open without a session: a person new to Herald names
themselves and chooses a password; someone with an account signs in to the invited
address (or, signed in to it already, only confirms). Opening it uses nothing up. When the
tenant's plan has no seat left (it was downgraded since the invite was made), the page
says so instead of asking for anything (409), and the link keeps working for later.

POST /tenants/switch moves the session to another tenant the person belongs to (a new
session: new CSRF binding, the new tenant's default data mode); any other tenant is a 404.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from litestar import Controller, Request, Response, get, post
from litestar.di import Provide
from litestar.exceptions import HTTPException, NotFoundException, PermissionDeniedException
from litestar.params import FromPath, FromQuery

from admin_ui.accounts import HOME, client_of, guards_of, refused_page
from admin_ui.pages import form_text, page, see_other
from admin_ui.session import (
    SSO_TENANT,
    Member,
    SignedInMember,
    end_session,
    provide_member,
    refused,
    require,
    signed_in_member,
    start_session,
)
from app.auth import accounts, devices, members, roles
from app.auth.accounts import AccountError, TooManyAttempts
from app.auth.mailer import SystemMailer
from app.auth.members import MemberError
from app.auth.sso import config as sso_config
from app.db import utcnow
from app.dependencies import DbSession
from app.settings import Settings

EMAIL_MAX_LENGTH = 320
ROLE_HELP = {
    roles.OWNER: "Everything, including members and billing",
    roles.ADMIN: "Everything but members and billing",
    roles.DEVELOPER: "Keys, templates, providers, webhooks, sending",
    roles.VIEWER: "Reads everything, changes nothing",
}
NOTICES = {
    "invited": "Invitation sent. The link works once, within 7 days.",
    "mail_failed": "The invitation was saved but its mail could not be sent: invite again.",
    "role": "Role changed.",
    "removed": "Member removed.",
    "revoked": "Invitation revoked: its link no longer works.",
}


@dataclass(frozen=True)
class InviteForm:
    email: str = ""
    role: str = roles.DEVELOPER
    errors: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SandboxMail:
    """An invite made on test data: the mail as it would have been sent, shown once."""

    to: str
    subject: str
    text: str
    link: str


async def _members_page(
    db_session: DbSession,
    member: Member,
    *,
    form: InviteForm | None = None,
    sandbox: SandboxMail | None = None,
    notice: str = "",
    error: str = "",
    limit_reached: bool = False,
    status_code: int = 200,
) -> Response[Any]:
    people = await members.list_members(db_session, tenant_id=member.tenant.id)
    invites = await members.list_invites(db_session, tenant_id=member.tenant.id)
    seats = await members.seats(db_session, tenant_id=member.tenant.id)
    return page(
        "members/members.html",
        status_code=status_code,
        member=member,
        people=people,
        seats=seats,
        limit_reached=limit_reached,
        invites=invites[: members.MAX_PENDING_INVITES],
        form=form or InviteForm(),
        sandbox=sandbox,
        notice=notice,
        error=error,
        roles=roles.ROLES,
        role_help=ROLE_HELP,
        can_manage=member.may("manage_members"),
        listed_max=members.MAX_MEMBERS_LISTED,
        now=utcnow(),
    )


def _role_field(value: str) -> str:
    if value not in roles.ROLES:
        raise HTTPException(
            status_code=422, detail=f"role: choose one of {', '.join(roles.ROLES)}."
        )
    return value


class MembersController(Controller):
    path = "/members"
    dependencies = {"member": Provide(provide_member)}

    @get("/")
    async def show(
        self, db_session: DbSession, member: SignedInMember, notice: FromQuery[str] = ""
    ) -> Response[Any]:
        return await _members_page(db_session, member, notice=NOTICES.get(notice, ""))

    @post("/invites")
    async def invite(
        self, request: Request[Any, Any, Any], db_session: DbSession, member: SignedInMember
    ) -> Response[Any]:
        require(member, "manage_members")
        data = await request.form()
        email, role = form_text(data, "email").strip(), form_text(data, "role")
        form = InviteForm(email=email[:EMAIL_MAX_LENGTH], role=role)
        if len(email) > EMAIL_MAX_LENGTH:
            form = InviteForm(email="", role=role, errors={"email": "That is not an address."})
            return await _members_page(db_session, member, form=form, status_code=422)
        settings: Settings = request.app.state.settings
        delivery = members.SANDBOX if member.mode == "test" else members.MAIL
        try:
            issued = await members.invite(
                db_session,
                guards_of(request).throttle,
                tenant_id=member.tenant.id,
                email=email,
                role=role,
                delivery=delivery,
                actor=member.actor,
                public_url=settings.public_url,
                acting_role=member.role,
            )
        except roles.RoleNotAllowed as error:
            raise refused(member, error) from None
        except (MemberError, AccountError) as error:
            status = 429 if isinstance(error, TooManyAttempts) else 422
            form = InviteForm(
                email=form.email, role=role, errors={error.field or "email": str(error)}
            )
            response = await _members_page(
                db_session,
                member,
                form=form,
                limit_reached=isinstance(error, members.MembersLimitReached),
                status_code=status,
            )
            if isinstance(error, TooManyAttempts):
                response.headers["Retry-After"] = str(error.retry_after)
            return response
        await db_session.commit()
        subject, text = members.invite_mail(
            tenant_name=member.tenant.name,
            inviter=member.user.name,
            role=issued.invite.role,
            link=issued.link,
        )
        if delivery == members.SANDBOX:
            sandbox = SandboxMail(issued.invite.email, subject, text, issued.link)
            return await _members_page(db_session, member, sandbox=sandbox, status_code=201)
        mailer: SystemMailer = request.app.state.mailer
        sent = await mailer.send(to=issued.invite.email, subject=subject, text=text)
        return see_other(request, f"/members?notice={'invited' if sent else 'mail_failed'}")

    @post("/invites/{invite_id:uuid}/revoke")
    async def revoke_invite(
        self,
        request: Request[Any, Any, Any],
        db_session: DbSession,
        member: SignedInMember,
        invite_id: FromPath[uuid.UUID],
    ) -> Response[Any]:
        require(member, "manage_members")
        try:
            found = await members.revoke_invite(
                db_session,
                tenant_id=member.tenant.id,
                invite_id=invite_id,
                actor=member.actor,
                acting_role=member.role,
            )
        except roles.RoleNotAllowed as error:
            raise refused(member, error) from None
        if not found:
            raise NotFoundException(f"No pending invitation {invite_id} in {member.tenant.name}.")
        await db_session.commit()
        return see_other(request, "/members?notice=revoked")

    @post("/{user_id:uuid}/role")
    async def change_role(
        self,
        request: Request[Any, Any, Any],
        db_session: DbSession,
        member: SignedInMember,
        user_id: FromPath[uuid.UUID],
    ) -> Response[Any]:
        require(member, "manage_members")
        role = _role_field(form_text(await request.form(), "role"))
        try:
            found = await members.change_role(
                db_session,
                tenant_id=member.tenant.id,
                user_id=user_id,
                role=role,
                actor=member.actor,
                acting_role=member.role,
            )
        except roles.RoleNotAllowed as error:
            raise refused(member, error) from None
        except MemberError as error:
            return await _members_page(db_session, member, error=str(error), status_code=409)
        if not found:
            raise NotFoundException(f"No member {user_id} in {member.tenant.name}.")
        await db_session.commit()
        if user_id == member.user.id and not roles.may(role, "manage_members"):
            return see_other(request, "/members")
        return see_other(request, "/members?notice=role")

    @post("/{user_id:uuid}/remove")
    async def remove(
        self,
        request: Request[Any, Any, Any],
        db_session: DbSession,
        member: SignedInMember,
        user_id: FromPath[uuid.UUID],
    ) -> Response[Any]:
        require(member, "manage_members")
        try:
            found = await members.remove_member(
                db_session,
                tenant_id=member.tenant.id,
                user_id=user_id,
                actor=member.actor,
                acting_role=member.role,
            )
        except roles.RoleNotAllowed as error:
            raise refused(member, error) from None
        except MemberError as error:
            return await _members_page(db_session, member, error=str(error), status_code=409)
        if not found:
            raise NotFoundException(f"No member {user_id} in {member.tenant.name}.")
        await db_session.commit()
        if user_id == member.user.id:  # they left: on to another tenant of theirs, if any
            others = [a for a in member.memberships if a.tenant.id != member.tenant.id]
            if not others:
                end_session(request)
                return see_other(request, "/signin")
            start_session(request, member.user, others[0].tenant.id)
            return see_other(request, HOME)
        return see_other(request, "/members?notice=removed")


class InviteController(Controller):
    """The invitation link's page: open to anyone holding the link."""

    path = "/invite"

    @get("/{token:str}")
    async def show(
        self, request: Request[Any, Any, Any], db_session: DbSession, token: FromPath[str]
    ) -> Response[Any]:
        found = await members.open_invite(db_session, token=token)
        if found is None:
            return page("members/invite.html", status_code=404, invite=None, errors={})
        refusal = await members.invite_refusal(db_session, found=found)
        if refusal is not None:
            return _full_page(found, refusal)
        return await _invite_page(request, db_session, found, token)

    @post("/{token:str}")
    async def accept(
        self, request: Request[Any, Any, Any], db_session: DbSession, token: FromPath[str]
    ) -> Response[Any]:
        found = await members.open_invite(db_session, token=token)
        if found is None:
            return page("members/invite.html", status_code=404, invite=None, errors={})
        form = await request.form()
        name, password = form_text(form, "name"), form_text(form, "password")
        signed_in = await signed_in_member(request, db_session)
        try:
            if found.has_account:
                joined = await members.accept_as_user(
                    db_session,
                    guards_of(request),
                    client_of(request),
                    token=token,
                    password=password,
                    signed_in=signed_in.user if signed_in else None,
                )
            else:
                joined = await members.accept_as_new_person(
                    db_session,
                    guards_of(request),
                    client_of(request),
                    token=token,
                    name=name[: accounts.MAX_NAME_LENGTH + 1],
                    password=password,
                )
        except members.MembersLimitReached as refusal:
            # Nothing of this attempt stays (the account, the invite's use): the link works
            # again once the tenant has a seat.
            await db_session.rollback()
            return _full_page(found, refusal)
        except (AccountError, MemberError) as error:
            if str(error) == members.INVALID_LINK:
                return page("members/invite.html", status_code=404, invite=None, errors={})
            problem = error if isinstance(error, AccountError) else AccountError(str(error))
            status = 400 if str(error) == accounts.WRONG_CREDENTIALS else 422
            return refused_page(
                "members/invite.html",
                problem,
                status_code=status,
                invite=found,
                token=token,
                name=name[: accounts.MAX_NAME_LENGTH],
                signed_in_as=_signed_in_as(signed_in, found),
            )
        await db_session.commit()
        start_session(request, joined.user, joined.tenant_id)
        response = see_other(request, HOME)
        if joined.device_token:
            settings: Settings = request.app.state.settings
            response.set_cookie(
                devices.COOKIE,
                joined.device_token,
                max_age=devices.LIFETIME_SECONDS,
                httponly=True,
                samesite="lax",
                secure=settings.secure_cookies,
            )
        return response


def _full_page(found: members.OpenInvite, refusal: members.MembersLimitReached) -> Response[Any]:
    """The invite works, but its tenant's plan has no seat for it now."""
    return page("members/invite.html", status_code=409, invite=found, full=str(refusal), errors={})


def _signed_in_as(signed_in: Member | None, found: members.OpenInvite) -> bool:
    return signed_in is not None and signed_in.user.email.lower() == found.email.lower()


async def _invite_page(
    request: Request[Any, Any, Any], db_session: DbSession, found: members.OpenInvite, token: str
) -> Response[Any]:
    signed_in = await signed_in_member(request, db_session)
    return page(
        "members/invite.html",
        invite=found,
        token=token,
        name="",
        errors={},
        signed_in_as=_signed_in_as(signed_in, found),
    )


class TenantSwitchController(Controller):
    """The top bar's tenant switch."""

    path = "/tenants"
    dependencies = {"member": Provide(provide_member)}

    @post("/switch")
    async def switch(
        self, request: Request[Any, Any, Any], db_session: DbSession, member: SignedInMember
    ) -> Response[Any]:
        value = form_text(await request.form(), "tenant_id")
        try:
            tenant_id = uuid.UUID(value[:64])
        except ValueError:
            raise HTTPException(status_code=422, detail="tenant_id: not a tenant id.") from None
        target = next((a for a in member.memberships if a.tenant.id == tenant_id), None)
        if target is None:
            raise NotFoundException("You are not a member of that tenant.")
        # The provider that signed this browser in vouches for its own tenant only: a tenant
        # that requires SSO is entered through its provider (owners excepted).
        session = request.scope.get("session")
        via_sso = session.get(SSO_TENANT) if isinstance(session, dict) else None
        if (
            target.role != roles.OWNER
            and via_sso != str(tenant_id)
            and await sso_config.tenants_requiring_sso(db_session, tenant_ids=[tenant_id])
        ):
            raise PermissionDeniedException(
                f"{target.tenant.name} requires single sign-on: sign out, then use "
                "“Sign in with SSO” with your work e-mail."
            )
        start_session(request, member.user, tenant_id)
        if isinstance(via_sso, str):
            request.set_session({**request.session, SSO_TENANT: via_sso})
        return see_other(request, HOME)
