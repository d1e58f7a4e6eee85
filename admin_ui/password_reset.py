"""Forgotten passwords: ask for a link by e-mail, then choose a new password through it.

/password-reset answers every well-formed address the same way, with the same page, and
mails the link (when the address has an account) after the answer has gone, so the time
taken tells nothing either. /password-reset/{token} shows a form and uses nothing up (mail
scanners fetch links); posting it sets the password, signs the account out everywhere
(app/auth/password_resets.py) and sends the person to the sign-in page.
"""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, get, post
from litestar.background_tasks import BackgroundTask
from litestar.params import FromPath

from admin_ui.accounts import client_of, guards_of, refused_page
from admin_ui.pages import form_text, page
from admin_ui.session import end_session
from app.auth import password_resets
from app.auth.accounts import AccountError
from app.auth.mailer import SystemMailer
from app.dependencies import DbSession
from app.settings import Settings

EMAIL_MAX_LENGTH = 320
FORM = "members/password_reset.html"


class PasswordResetController(Controller):
    path = "/password-reset"

    @get("/")
    async def ask_form(self) -> Response[Any]:
        return page(FORM, step="ask", email="", errors={})

    @post("/")
    async def ask(self, request: Request[Any, Any, Any], db_session: DbSession) -> Response[Any]:
        email = form_text(await request.form(), "email").strip()
        if len(email) > EMAIL_MAX_LENGTH:
            error = AccountError("That is not an e-mail address.", field="email")
            return refused_page(FORM, error, status_code=422, step="ask", email="")
        settings: Settings = request.app.state.settings
        try:
            found = await password_resets.request_link(
                db_session,
                guards_of(request),
                client_of(request),
                email=email,
                public_url=settings.public_url,
            )
        except AccountError as error:
            await db_session.rollback()
            return refused_page(FORM, error, status_code=422, step="ask", email=email)
        await db_session.commit()
        response = page(FORM, step="sent", email=email, errors={})
        if found is not None:
            user, link = found
            subject, text = password_resets.reset_mail(user.name, link)
            mailer: SystemMailer = request.app.state.mailer
            response.background = BackgroundTask(
                mailer.send, to=user.email, subject=subject, text=text
            )
        return response

    @get("/{token:str}")
    async def new_password_form(self, db_session: DbSession, token: FromPath[str]) -> Response[Any]:
        if not await password_resets.link_works(db_session, token=token):
            return page(FORM, status_code=400, step="invalid", errors={})
        return page(FORM, step="choose", token=token, errors={})

    @post("/{token:str}")
    async def set_password(
        self, request: Request[Any, Any, Any], db_session: DbSession, token: FromPath[str]
    ) -> Response[Any]:
        password = form_text(await request.form(), "password")
        try:
            await password_resets.reset_password(
                db_session, guards_of(request), client_of(request), token=token, password=password
            )
        except AccountError as error:
            await db_session.rollback()
            if str(error) == password_resets.INVALID_LINK:
                return page(FORM, status_code=400, step="invalid", errors={})
            return refused_page(FORM, error, status_code=422, step="choose", token=token)
        await db_session.commit()
        end_session(request)  # whoever was signed in here, the session is over anyway
        return page(FORM, step="done", errors={})
