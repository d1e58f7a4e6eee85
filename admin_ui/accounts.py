"""Sign-up, sign-in, sign-out and e-mail verification: the dashboard's doors.

The rules (limits, delays, verification) live in app/auth; this module reads forms, finds
who is knocking (`client_of`) and turns the services' answers into pages: 422 with the field
at fault, 400 for wrong credentials, 429 with Retry-After when told to slow down.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from litestar import Controller, Request, Response, get, post
from litestar.datastructures import FormMultiDict
from litestar.params import FromQuery

from admin_ui.pages import form_text, page, see_other
from admin_ui.session import USER_ID, end_session, signed_in_member, start_session
from app.auth import accounts, devices, verification
from app.auth.accounts import AccountError, Client, Guards, TooManyAttempts
from app.auth.client_ip import client_address, client_network
from app.auth.mailer import SystemMailer
from app.auth.sso import signin as sso_signin
from app.dependencies import DbSession
from app.settings import Settings

HOME = "/overview"
# The columns' sizes: longer values would fail in the database rather than on the form.
FIELD_LIMITS = {"company": 200, "name": 200, "email": accounts.MAX_EMAIL_LENGTH}


@dataclass(frozen=True)
class SignUpForm:
    company: str = ""
    name: str = ""
    email: str = ""
    password: str = ""

    @classmethod
    def read(cls, form: FormMultiDict) -> SignUpForm:
        return cls(
            company=form_text(form, "company"),
            name=form_text(form, "name"),
            email=form_text(form, "email"),
            password=form_text(form, "password"),
        )

    def too_long(self) -> AccountError | None:
        for field, limit in FIELD_LIMITS.items():
            if len(getattr(self, field)) > limit:
                return AccountError(f"At most {limit} characters, please.", field=field)
        return None


def guards_of(request: Request[Any, Any, Any]) -> Guards:
    guards: Guards = request.app.state.account_guards
    return guards


def client_of(request: Request[Any, Any, Any]) -> Client:
    """The request's network (HERALD_TRUSTED_PROXY_HOPS says whom to believe) and device."""
    settings: Settings = request.app.state.settings
    address = client_address(
        request.client.host if request.client else None,
        request.headers.getall("x-forwarded-for", []),
        settings.trusted_proxy_hops,
    )
    return Client(client_network(address), request.cookies.get(devices.COOKIE))


def form_errors(error: AccountError) -> dict[str, str]:
    """Field errors by field name; an error about no field in particular is under ''."""
    return {error.field or "": str(error)}


def refused_page(
    template_name: str, error: AccountError, *, status_code: int, **context: Any
) -> Response[Any]:
    """A form sent back with its error: 429 with Retry-After when the answer is "slow down"."""
    if isinstance(error, TooManyAttempts):
        response = page(template_name, status_code=429, errors=form_errors(error), **context)
        response.headers["Retry-After"] = str(error.retry_after)
        return response
    return page(template_name, status_code=status_code, errors=form_errors(error), **context)


async def mail_link(request: Request[Any, Any, Any], name: str, to: str, link: str) -> bool:
    mailer: SystemMailer = request.app.state.mailer
    subject, text = verification.link_mail(name, link)
    return await mailer.send(to=to, subject=subject, text=text)


class AccountsController(Controller):
    path = "/"

    @get("/")
    async def home(self, request: Request[Any, Any, Any]) -> Response[Any]:
        # The home page checks the session properly; this only picks the likelier door.
        return see_other(request, HOME if USER_ID in request.session else "/signin")

    @get("/signup")
    async def sign_up_form(
        self, request: Request[Any, Any, Any], db_session: DbSession
    ) -> Response[Any]:
        if await signed_in_member(request, db_session):
            return see_other(request, HOME)
        return page("signup.html", form=SignUpForm(), errors={})

    @post("/signup")
    async def sign_up(
        self, request: Request[Any, Any, Any], db_session: DbSession
    ) -> Response[Any]:
        form = SignUpForm.read(await request.form())
        settings: Settings = request.app.state.settings
        try:
            if problem := form.too_long():
                raise problem
            signed_up = await accounts.sign_up(
                db_session,
                guards_of(request),
                client_of(request),
                email=form.email,
                name=form.name,
                password=form.password,
                company=form.company,
                public_url=settings.public_url,
            )
        except AccountError as error:
            await db_session.rollback()
            return refused_page("signup.html", error, status_code=422, form=form)
        await db_session.commit()
        user = signed_up.user
        sent = await mail_link(request, user.name, user.email, signed_up.link)
        start_session(request, user, signed_up.tenant.id)
        return see_other(request, HOME if sent else "/account?notice=mail_failed")

    @get("/signin")
    async def sign_in_form(
        self, request: Request[Any, Any, Any], db_session: DbSession
    ) -> Response[Any]:
        if await signed_in_member(request, db_session):
            return see_other(request, HOME)
        return page("signin.html", email="", errors={})

    @post("/signin")
    async def sign_in(
        self, request: Request[Any, Any, Any], db_session: DbSession
    ) -> Response[Any]:
        form = await request.form()
        email = form_text(form, "email")
        settings: Settings = request.app.state.settings
        try:
            signed_in = await accounts.sign_in(
                db_session,
                guards_of(request),
                client_of(request),
                email=email,
                password=form_text(form, "password"),
            )
        except AccountError as error:
            await db_session.rollback()
            return refused_page("signin.html", error, status_code=400, email=email)
        user = signed_in.user
        memberships = await accounts.tenants_of(db_session, user_id=user.id)
        if not memberships:
            orphan = AccountError("This account has no access to any tenant.")
            return refused_page("signin.html", orphan, status_code=400, email=email)
        # Tenants that require SSO take no password from their members, owners excepted.
        allowed = await sso_signin.password_tenants(
            db_session, memberships=[(m.tenant.id, m.role) for m in memberships]
        )
        open_to_password = [m for m in memberships if m.tenant.id in allowed]
        if not open_to_password:
            names = ", ".join(m.tenant.name for m in memberships[:3])
            sso_only = AccountError(
                f"{names} requires single sign-on: use “Sign in with SSO” with your work e-mail."
            )
            return refused_page("signin.html", sso_only, status_code=403, email=email)
        start_session(request, user, open_to_password[0].tenant.id)
        response = see_other(request, HOME)
        response.set_cookie(
            devices.COOKIE,
            signed_in.device_token,
            max_age=devices.LIFETIME_SECONDS,
            httponly=True,
            samesite="lax",
            secure=settings.secure_cookies,
        )
        return response

    @post("/signout")
    async def sign_out(self, request: Request[Any, Any, Any]) -> Response[Any]:
        end_session(request)
        return see_other(request, "/signin")

    @get("/verify-email")
    async def verify_email_form(self, token: FromQuery[str] = "") -> Response[Any]:
        # A click on the mailed link only shows a button: mail scanners that fetch links
        # must not use up the single-use token.
        return page("verify_email.html", token=token[: verification.MAX_TOKEN_LENGTH + 1])

    @post("/verify-email")
    async def verify_email(
        self, request: Request[Any, Any, Any], db_session: DbSession
    ) -> Response[Any]:
        token = form_text(await request.form(), "token")
        user = await verification.verify(db_session, token=token)
        await db_session.commit()
        if user is None:
            return page("verify_email.html", status_code=400, token="", invalid=True)
        return page("verify_email.html", token="", verified=user.email)
