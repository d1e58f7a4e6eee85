"""Single sign-on: the owners' settings page, and the sign-in through a tenant's provider.

/settings/sso (owners only, `manage_sso`): the provider's issuer, client ID and secret (written,
never shown back), the e-mail domains whose people it signs in, "require SSO", the role people
join with, the redirect URI to register at the provider, and a connection test.

/sso: "Sign in with SSO". The typed address's domain finds the tenant's provider; the browser
goes there with a fresh state, nonce and PKCE challenge (kept in its encrypted session), and
comes back to /sso/callback, where the code is exchanged and the ID token checked
(app/auth/sso/oidc.py) before anyone is signed in (app/auth/sso/signin.py). Every failure is a
page that says what went wrong, with a way back to the sign-in page.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from litestar import Controller, Request, Response, get, post
from litestar.datastructures import FormMultiDict
from litestar.di import Provide
from litestar.params import FromQuery
from litestar.response import Redirect
from sqlalchemy.ext.asyncio import AsyncSession

from admin_ui.accounts import HOME, client_of, guards_of
from admin_ui.pages import CONTENT_SECURITY_POLICY, form_text, is_htmx, page, see_other
from admin_ui.session import (
    SSO_TENANT,
    Member,
    SignedInMember,
    provide_member,
    refused,
    require,
    signed_in_member,
    start_session,
)
from app.auth import accounts, roles
from app.auth.accounts import AccountError
from app.auth.sso import config as sso_config
from app.auth.sso import oidc, signin
from app.auth.sso.config import InvalidSsoConfig, SsoInput, SsoSettings
from app.auth.sso.models import JOIN_ROLES
from app.auth.throttle import SIGN_IN_PER_NETWORK
from app.crypto import DecryptionError, keyring_for
from app.dependencies import DbSession
from app.settings import Settings

CALLBACK_PATH = "/sso/callback"
PENDING = "sso_pending"  # the session key of a sign-in under way (oidc.PendingSignIn)
MAX_QUERY_VALUE = 2048
ROLE_HELP = {
    "viewer": "Reads everything, changes nothing",
    "developer": "Builds: keys, templates, providers",
    "admin": "Everything but members, billing and SSO",
}


def _settings(request: Request[Any, Any, Any]) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def redirect_uri(request: Request[Any, Any, Any]) -> str:
    return _settings(request).public_url + CALLBACK_PATH


@dataclass(frozen=True)
class SsoForm:
    """The settings form as sent (the secret is never put back into it)."""

    issuer: str = ""
    client_id: str = ""
    domains: str = ""
    require_sso: bool = False
    default_role: str = "viewer"
    secret: str = field(default="", repr=False)

    @classmethod
    def of(cls, stored: SsoSettings | None) -> SsoForm:
        if stored is None:
            return cls()
        return cls(
            issuer=stored.issuer,
            client_id=stored.client_id,
            domains=", ".join(stored.domains),
            require_sso=stored.require_sso,
            default_role=stored.default_role,
        )

    @classmethod
    def read(cls, form: FormMultiDict) -> SsoForm:
        return cls(
            issuer=form_text(form, "issuer")[: sso_config.MAX_ISSUER_LENGTH + 1],
            client_id=form_text(form, "client_id")[: sso_config.MAX_CLIENT_ID_LENGTH + 1],
            domains=form_text(form, "domains")[:4000],
            require_sso=form_text(form, "require_sso") == "on",
            default_role=form_text(form, "default_role")[:32],
            secret=form_text(form, "client_secret")[: sso_config.MAX_SECRET_LENGTH + 1],
        )

    def to_input(self) -> SsoInput:
        return SsoInput(
            issuer=self.issuer,
            client_id=self.client_id,
            client_secret=self.secret or None,
            domains=tuple(sso_config.split_domains(self.domains)),
            require_sso=self.require_sso,
            default_role=self.default_role,
        )


async def _settings_page(
    request: Request[Any, Any, Any],
    db_session: AsyncSession,
    member: Member,
    *,
    form: SsoForm | None = None,
    errors: dict[str, str] | None = None,
    notice: str = "",
    test: dict[str, Any] | None = None,
    status_code: int = 200,
) -> Response[Any]:
    stored = await sso_config.get_settings(db_session, tenant_id=member.tenant.id, role=member.role)
    return page(
        "sso/settings.html",
        status_code=status_code,
        member=member,
        stored=stored,
        form=form or SsoForm.of(stored),
        errors=errors or {},
        notice=notice,
        test=test,
        redirect_uri=redirect_uri(request),
        roles=JOIN_ROLES,
        role_help=ROLE_HELP,
    )


def _sso_form(
    request: Request[Any, Any, Any], email: str, errors: dict[str, str], status_code: int = 200
) -> Response[Any]:
    """The "Sign in with SSO" form. Browsers check a form post's redirects against the
    form-action policy of the page that holds the form: this page's form leads, through
    /sso, to the tenant's provider, whose origin is not known until the address is typed.
    So here alone form-action admits any https origin (and http ones where the operator
    allows private provider URLs); the page shows nothing but the typed address."""
    response = page("sso/signin.html", status_code=status_code, email=email, errors=errors)
    schemes = "https: http:" if _settings(request).allow_private_urls else "https:"
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY.replace(
        "form-action 'self'", f"form-action 'self' {schemes}"
    )
    return response


def _failure(message: str, status_code: int = 400) -> Response[Any]:
    return page("sso/failed.html", status_code=status_code, message=message)


class SsoController(Controller):
    path = "/"

    # ---- the owners' settings page -------------------------------------------------------

    @get("/settings/sso", dependencies={"member": Provide(provide_member)})
    async def settings_page(
        self,
        request: Request[Any, Any, Any],
        db_session: DbSession,
        member: SignedInMember,
        saved: FromQuery[str] = "",
        removed: FromQuery[str] = "",
    ) -> Response[Any]:
        require(member, "manage_sso")
        notice = ""
        if saved:
            notice = "Saved. Test the connection, then try signing in with SSO."
        elif removed:
            notice = "Single sign-on is off: members sign in with their passwords."
        try:
            return await _settings_page(request, db_session, member, notice=notice)
        except roles.RoleNotAllowed as error:
            raise refused(member, error) from None

    @post("/settings/sso", dependencies={"member": Provide(provide_member)})
    async def save_settings(
        self, request: Request[Any, Any, Any], db_session: DbSession, member: SignedInMember
    ) -> Response[Any]:
        require(member, "manage_sso")
        form = SsoForm.read(await request.form())
        settings = _settings(request)
        try:
            await sso_config.save(
                db_session,
                tenant_id=member.tenant.id,
                data=form.to_input(),
                actor=member.actor,
                keyring=keyring_for(settings),
                allow_private=settings.allow_private_urls,
                role=member.role,
            )
        except roles.RoleNotAllowed as error:
            raise refused(member, error) from None
        except InvalidSsoConfig as error:
            return await _settings_page(
                request,
                db_session,
                member,
                form=form,
                errors={error.field: error.message},
                status_code=422,
            )
        await db_session.commit()
        return see_other(request, "/settings/sso?saved=1")

    @post("/settings/sso/test", dependencies={"member": Provide(provide_member)})
    async def test_connection(
        self, request: Request[Any, Any, Any], db_session: DbSession, member: SignedInMember
    ) -> Response[Any]:
        """Fetch the stored issuer's discovery document and keys now (no cache)."""
        require(member, "manage_sso")
        stored = await sso_config.get_settings(
            db_session, tenant_id=member.tenant.id, role=member.role
        )
        await db_session.commit()  # no connection held while the provider answers
        if stored is None:
            test = {"ok": False, "message": "Save the settings first, then test them."}
        else:
            allow_private = _settings(request).allow_private_urls
            try:
                found = await oidc.discover(stored.issuer, allow_private=allow_private)
            except oidc.SignInFailed as error:
                test = {"ok": False, "message": str(error)}
            else:
                # The next sign-in uses what was just found (the owner may have fixed it).
                oidc.providers.put(found, allow_private=allow_private)
                test = {
                    "ok": True,
                    "message": (
                        f"Connected: {len(found.keys.keys)} signing key(s), algorithms "
                        f"{', '.join(found.algorithms)}."
                    ),
                    "authorization_endpoint": found.authorization_endpoint,
                    "token_endpoint": found.token_endpoint,
                }
        if is_htmx(request):
            return page("sso/partials/test_result.html", test=test)
        return await _settings_page(request, db_session, member, test=test)

    @post("/settings/sso/remove", dependencies={"member": Provide(provide_member)})
    async def remove_settings(
        self, request: Request[Any, Any, Any], db_session: DbSession, member: SignedInMember
    ) -> Response[Any]:
        require(member, "manage_sso")
        try:
            await sso_config.remove(
                db_session, tenant_id=member.tenant.id, actor=member.actor, role=member.role
            )
        except roles.RoleNotAllowed as error:
            raise refused(member, error) from None
        await db_session.commit()
        return see_other(request, "/settings/sso?removed=1")

    # ---- signing in through the provider -------------------------------------------------

    @get("/sso")
    async def sso_form(
        self, request: Request[Any, Any, Any], db_session: DbSession, email: FromQuery[str] = ""
    ) -> Response[Any]:
        if await signed_in_member(request, db_session):
            return see_other(request, HOME)
        return _sso_form(request, email[: accounts.MAX_EMAIL_LENGTH], {})

    @post("/sso")
    async def start(self, request: Request[Any, Any, Any], db_session: DbSession) -> Response[Any]:
        """Find the provider by the address's domain and send the browser there."""
        typed = form_text(await request.form(), "email")[: accounts.MAX_EMAIL_LENGTH + 1]

        def again(message: str, status_code: int = 422) -> Response[Any]:
            return _sso_form(request, typed, {"email": message}, status_code)

        guards = guards_of(request)
        wait = await guards.throttle.take(
            (f"sso:net:{client_of(request).network}", SIGN_IN_PER_NETWORK)
        )
        if wait:
            response = again(str(accounts.TooManyAttempts(wait)), 429)
            response.headers["Retry-After"] = str(accounts.TooManyAttempts(wait).retry_after)
            return response
        try:
            email = accounts.normalise_email(typed)
        except AccountError as error:
            return again(str(error))
        domain = email.rsplit("@", 1)[1]
        config = await sso_config.config_for_domain(db_session, domain=domain)
        await db_session.commit()  # hand the connection back before calling the provider
        if config is None:
            return again(
                f"No single sign-on is set up for {domain}. Sign in with your password instead."
            )
        allow_private = _settings(request).allow_private_urls
        try:
            provider = await oidc.providers.get(config.issuer, allow_private=allow_private)
        except oidc.SignInFailed as error:
            return _failure(f"Your organisation's identity provider cannot be used: {error}", 502)
        url, pending = oidc.authorization_request(
            provider,
            tenant_id=str(config.tenant_id),
            client_id=config.client_id,
            redirect_uri=redirect_uri(request),
            login_hint=email,
        )
        session = request.scope.get("session")
        request.set_session(
            {**(session if isinstance(session, dict) else {}), PENDING: pending.to_session()}
        )
        response = Redirect(url, status_code=303)
        return response

    @get(CALLBACK_PATH)
    async def callback(
        self, request: Request[Any, Any, Any], db_session: DbSession
    ) -> Response[Any]:
        """The provider sends the browser back here with a code (or an error)."""
        # `state` is a name Litestar reserves for handler arguments: read the query directly.
        answer = request.query_params
        code, state, iss = (str(answer.get(n) or "") for n in ("code", "state", "iss"))
        error = str(answer.get("error") or "")
        error_description = str(answer.get("error_description") or "")
        session = request.scope.get("session")
        session = session if isinstance(session, dict) else {}
        pending = oidc.PendingSignIn.from_session(session.get(PENDING))
        # One answer per sign-in: whatever happens next, this one is used up.
        request.set_session({k: v for k, v in session.items() if k != PENDING})
        if pending is None and not code and await signed_in_member(request, db_session):
            return see_other(request, HOME)  # back here after signing in: nothing to do
        if (
            pending is None
            or not state
            or len(state) > MAX_QUERY_VALUE
            or not pending.matches(state)
        ):
            return _failure(
                "This sign-in was not started in this browser, or was already used. "
                "Please start again from the sign-in page."
            )
        if pending.expired():
            return _failure("This sign-in took too long. Please start again.")
        if error:
            detail = f": {error_description[:300]}" if error_description else ""
            return _failure(f"Your identity provider did not sign you in ({error[:100]}){detail}.")
        if not code or len(code) > MAX_QUERY_VALUE:
            return _failure("Your identity provider sent no authorization code.")
        try:
            tenant_id = uuid.UUID(pending.tenant_id)
        except ValueError:
            return _failure("This sign-in cannot be completed. Please start again.")
        config = await sso_config.get_config(db_session, tenant_id=tenant_id)
        if config is None:
            return _failure("Single sign-on is no longer set up for this account.")
        if iss and iss != config.issuer:  # RFC 9207: the answer comes from another provider
            return _failure("The answer came from another identity provider than the one asked.")
        settings = _settings(request)
        allow_private = settings.allow_private_urls
        try:
            secret = sso_config.open_secret(config, keyring_for(settings))
        except DecryptionError:
            return _failure(
                "The client secret stored for this provider cannot be read: an "
                "owner must enter it again.",
                500,
            )
        issuer, client_id = config.issuer, config.client_id
        await db_session.commit()  # no connection held while the provider answers
        try:
            provider = await oidc.providers.get(issuer, allow_private=allow_private)
            id_token = await oidc.exchange_code(
                provider,
                client_id=client_id,
                client_secret=secret,
                redirect_uri=redirect_uri(request),
                code=code,
                verifier=pending.verifier,
                allow_private=allow_private,
            )
            if not oidc.signing_key_known(id_token, provider):
                provider = await oidc.providers.refresh_keys(provider, allow_private=allow_private)
            identity = oidc.validate_id_token(
                id_token, provider, client_id=client_id, nonce=pending.nonce
            )
            config = await sso_config.get_config(db_session, tenant_id=tenant_id)
            if config is None:
                raise oidc.SignInFailed("Single sign-on is no longer set up for this account.")
            signed = await signin.sign_in(
                db_session, guards_of(request).passwords, config=config, identity=identity
            )
        except oidc.SignInFailed as failed:
            await db_session.rollback()
            return _failure(str(failed))
        await db_session.commit()
        start_session(request, signed.user, signed.tenant_id)
        request.set_session({**request.session, SSO_TENANT: str(signed.tenant_id)})
        return see_other(request, HOME)
