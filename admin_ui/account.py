"""The account page: the signed-in person's e-mail (and its verification), their password,
and their sessions.

Changing the password and "sign out everywhere" both raise the user's session generation
(admin_ui/session.py): every other browser is signed out at its next request. A new
password keeps this browser signed in, with a new session; signing out everywhere does not.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from litestar import Controller, Request, Response, get, post
from litestar.di import Provide
from litestar.params import FromQuery

from admin_ui.accounts import client_of, guards_of, mail_link, refused_page
from admin_ui.pages import form_text, page, see_other
from admin_ui.session import (
    Member,
    SignedInMember,
    end_session,
    provide_member,
    set_mode,
    start_session,
)
from app.auth import accounts, verification
from app.auth.accounts import AccountError
from app.dependencies import DbSession
from app.settings import Settings

NOTICES = {
    "password": "Your password was changed. Your other sessions were signed out.",
    "sent": "We sent you a new link. It works once, within 24 hours.",
    "mail_failed": "We could not send the verification mail just now. Send it again below.",
}


async def _context(db_session: DbSession, member: Member) -> dict[str, Any]:
    allowed = await verification.live_keys_allowed(db_session, tenant_id=member.tenant.id)
    return {"member": member, "live_allowed": allowed, "active": "account"}


class AccountController(Controller):
    path = "/account"
    dependencies = {"member": Provide(provide_member)}

    @get("/")
    async def show(
        self, db_session: DbSession, member: SignedInMember, notice: FromQuery[str] = ""
    ) -> Response[Any]:
        context = await _context(db_session, member)
        return page("account.html", errors={}, notice=NOTICES.get(notice, ""), **context)

    @post("/password")
    async def change_password(
        self, request: Request[Any, Any, Any], db_session: DbSession, member: SignedInMember
    ) -> Response[Any]:
        form = await request.form()
        try:
            user = await accounts.change_password(
                db_session,
                guards_of(request),
                client_of(request),
                user_id=member.user.id,
                current=form_text(form, "current_password"),
                new=form_text(form, "new_password"),
            )
        except AccountError as error:  # raised before anything was written
            context = await _context(db_session, member)
            return refused_page("account.html", error, status_code=422, notice="", **context)
        await db_session.commit()
        start_session(request, user, member.tenant.id)  # this browser stays signed in
        return see_other(request, "/account?notice=password")

    @post("/sign-out-everywhere")
    async def sign_out_everywhere(
        self, request: Request[Any, Any, Any], db_session: DbSession, member: SignedInMember
    ) -> Response[Any]:
        await accounts.end_all_sessions(db_session, user_id=member.user.id)
        await db_session.commit()
        end_session(request)
        return see_other(request, "/signin")

    @post("/verification")
    async def resend_verification(
        self, request: Request[Any, Any, Any], db_session: DbSession, member: SignedInMember
    ) -> Response[Any]:
        settings: Settings = request.app.state.settings
        try:
            link = await accounts.resend_link(
                db_session, guards_of(request), user=member.user, public_url=settings.public_url
            )
        except AccountError as error:  # raised before anything was written
            context = await _context(db_session, member)
            return refused_page("account.html", error, status_code=409, notice="", **context)
        await db_session.commit()
        sent = await mail_link(request, member.user.name, member.user.email, link)
        return see_other(request, f"/account?notice={'sent' if sent else 'mail_failed'}")


class ModeController(Controller):
    """The switch between live and test data: every page shows and acts on one mode."""

    path = "/mode"
    dependencies = {"member": Provide(provide_member)}

    @post("/")
    async def switch(
        self, request: Request[Any, Any, Any], member: SignedInMember
    ) -> Response[Any]:
        set_mode(request, form_text(await request.form(), "mode"))
        return see_other(request, _same_site_path(request) or "/overview")


def _same_site_path(request: Request[Any, Any, Any]) -> str:
    """The section of the page the request came from, when it is one of ours (Referer):
    `/templates/welcome` gives `/templates`, since an id of one mode is not found in the
    other; a list page keeps its query (its filters)."""
    referer = urlsplit(request.headers.get("referer", ""))
    if referer.netloc != request.url.netloc or not referer.path.startswith("/"):
        return ""
    section = "/" + referer.path.strip("/").split("/", 1)[0]
    if section != referer.path.rstrip("/"):
        return section
    return section + (f"?{referer.query}" if referer.query else "")
