"""Sign-up, sign-in and sign-out: the dashboard's doors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from litestar import Controller, Request, Response, get, post
from litestar.datastructures import FormMultiDict

from admin_ui.pages import form_text, page, see_other
from admin_ui.session import USER_ID, end_session, signed_in_member, start_session
from app.auth import accounts
from app.auth.accounts import AccountError, AccountLocked
from app.db import utcnow
from app.dependencies import DbSession
from app.settings import Settings

HOME = "/keys"
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


def _form_errors(error: AccountError) -> dict[str, str]:
    """Field errors by field name; an error about no field in particular is under ''."""
    return {error.field or "": str(error)}


def _sign_up_page(form: SignUpForm, error: AccountError | None = None) -> Response[Any]:
    errors = _form_errors(error) if error else {}
    return page("signup.html", status_code=422 if error else 200, form=form, errors=errors)


def _sign_in_page(email: str = "", error: AccountError | None = None) -> Response[Any]:
    if isinstance(error, AccountLocked):
        response = page(
            "signin.html",
            status_code=429,
            email=email,
            errors={"": str(error)},
            locked_until=error.until,
        )
        retry_after = max(1, int((error.until - utcnow()).total_seconds()))
        response.headers["Retry-After"] = str(retry_after)
        return response
    if error is not None:
        return page("signin.html", status_code=400, email=email, errors=_form_errors(error))
    return page("signin.html", email=email, errors={})


class AccountsController(Controller):
    path = "/"

    @get("/")
    async def home(self, request: Request[Any, Any, Any]) -> Response[Any]:
        # The /keys page checks the session properly; this only picks the likelier door.
        return see_other(request, HOME if USER_ID in request.session else "/signin")

    @get("/signup")
    async def sign_up_form(
        self, request: Request[Any, Any, Any], db_session: DbSession
    ) -> Response[Any]:
        if await signed_in_member(request, db_session):
            return see_other(request, HOME)
        return _sign_up_page(SignUpForm())

    @post("/signup")
    async def sign_up(
        self, request: Request[Any, Any, Any], db_session: DbSession
    ) -> Response[Any]:
        form = SignUpForm.read(await request.form())
        try:
            if problem := form.too_long():
                raise problem
            user, tenant = await accounts.sign_up(
                db_session,
                email=form.email,
                name=form.name,
                password=form.password,
                company=form.company,
            )
        except AccountError as error:
            await db_session.rollback()
            return _sign_up_page(form, error)
        await db_session.commit()
        start_session(request, user.id, tenant.id)
        return see_other(request, HOME)

    @get("/signin")
    async def sign_in_form(
        self, request: Request[Any, Any, Any], db_session: DbSession
    ) -> Response[Any]:
        if await signed_in_member(request, db_session):
            return see_other(request, HOME)
        return _sign_in_page()

    @post("/signin")
    async def sign_in(
        self, request: Request[Any, Any, Any], db_session: DbSession
    ) -> Response[Any]:
        form = await request.form()
        email = form_text(form, "email")
        settings: Settings = request.app.state.settings
        try:
            user = await accounts.sign_in(
                db_session,
                email=email,
                password=form_text(form, "password"),
                max_failures=settings.signin_max_failures,
                lockout_seconds=settings.signin_lockout_seconds,
            )
        except AccountError as error:
            await db_session.rollback()
            return _sign_in_page(email, error)
        memberships = await accounts.tenants_of(db_session, user_id=user.id)
        if not memberships:
            return _sign_in_page(email, AccountError("This account has no access to any tenant."))
        start_session(request, user.id, memberships[0].tenant.id)
        return see_other(request, HOME)

    @post("/signout")
    async def sign_out(self, request: Request[Any, Any, Any]) -> Response[Any]:
        end_session(request)
        return see_other(request, "/signin")
