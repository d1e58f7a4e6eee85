"""Who is signed in to the dashboard: the session cookie's contents and the member they name.

The session (an encrypted, signed cookie) holds only the user id, the current tenant id, the
user's session generation when it began, the data mode the pages show (live or test, as
Stripe's "view test data" switch) and the CSRF binding (admin_ui/csrf.py).
Everything else, the role in particular, is read from the database on every request, so a
changed or removed membership takes effect at once; and a session whose generation is not
the user's current one (they signed out everywhere, or changed their password since) is
over, whichever browser holds its cookie.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeAlias

from litestar import Request
from litestar.di import NamedDependency
from litestar.exceptions import PermissionDeniedException
from litestar.middleware.session.base import SessionMiddleware
from litestar.middleware.session.client_side import ClientSideSessionBackend, CookieBackendConfig
from litestar.types import ASGIApp
from sqlalchemy.ext.asyncio import AsyncSession

from admin_ui.pages import is_htmx
from app.auth import accounts, roles, verification
from app.auth.models import User
from app.auth.sso import config as sso_config
from app.dependencies import DbSession
from app.settings import Settings
from app.tenants.models import Tenant
from app.usage import warnings as usage_warnings
from app.usage.warnings import QuotaAlert

SESSION_COOKIE = "herald_session"
SESSION_MAX_AGE = 12 * 3600  # a working day; people sign in again the next morning
USER_ID = "user_id"
TENANT_ID = "tenant_id"
GENERATION = "generation"
MODE = "mode"
# The tenant whose identity provider signed this session in (admin_ui/sso.py), if any.
SSO_TENANT = "sso_tenant"
MODES = ("live", "test")
# Who sees the quota banner: owners (who change the plan), and admins and developers (who
# run what sends, and meet the 429s or the overage first). Viewers only read: nothing in
# it is theirs to act on.
QUOTA_ALERT_ROLES = frozenset({roles.OWNER, roles.ADMIN, roles.DEVELOPER})


class SignInRequired(Exception):
    """The request needs a signed-in member and has none; answered with a way to /signin."""


@dataclass(frozen=True)
class Member:
    """The signed-in person, in the tenant the session is working on, with their role there."""

    user: User
    tenant: Tenant
    role: str
    # The data the pages show and act on: every query of a page is bound to this mode as
    # an API key's are to its own, so test data never mixes with live.
    mode: str = "live"
    # Every tenant the person belongs to (this one too), for the top bar's tenant switch.
    memberships: tuple[accounts.TenantAccess, ...] = ()
    # The tenant's channel groups at 80 % or more of their quota this month: every full
    # page's banner (layout.html), for the roles in QUOTA_ALERT_ROLES.
    quota_alerts: tuple[QuotaAlert, ...] = ()

    @property
    def actor(self) -> str:
        return f"user:{self.user.email}"

    @property
    def can_manage_keys(self) -> bool:
        """What the pages show; the key service enforces the same rule (app/auth/roles.py)."""
        return roles.may_manage_keys(self.role)

    def may(self, action: str) -> bool:
        """What the pages show (buttons, forms); the services enforce the same table."""
        return roles.may(self.role, action)


def session_config(settings: Settings, secret_key: bytes) -> CookieBackendConfig:
    return CookieBackendConfig(
        secret=_derive_key(secret_key, b"herald dashboard session"),
        key=SESSION_COOKIE,
        max_age=SESSION_MAX_AGE,
        httponly=True,
        samesite="lax",
        secure=settings.secure_cookies,
    )


def session_middleware(settings: Settings, secret_key: bytes) -> Callable[[ASGIApp], ASGIApp]:
    """The cookie-session middleware for the dashboard's router.

    Litestar deep-copies routers on registration and the backend's cipher cannot be copied;
    a plain function (copied by reference) hands the one backend to each route's stack.
    """
    backend = ClientSideSessionBackend(config=session_config(settings, secret_key))

    def wrap(app: ASGIApp) -> ASGIApp:
        return SessionMiddleware(app=app, backend=backend)

    return wrap


def _derive_key(secret_key: bytes, purpose: bytes) -> bytes:
    # The app secret also keys the CSRF tokens; each use gets a key of its own.
    return hmac.new(secret_key, purpose, hashlib.sha256).digest()


def start_session(request: Request[Any, Any, Any], user: User, tenant_id: uuid.UUID) -> None:
    """A new session (and so a new CSRF binding) for the user, in their current generation."""
    request.clear_session()
    request.set_session(
        {USER_ID: str(user.id), TENANT_ID: str(tenant_id), GENERATION: user.session_generation}
    )


def set_mode(request: Request[Any, Any, Any], mode: str) -> None:
    """Switch the pages between live and test data (an unknown mode changes nothing)."""
    session = request.scope.get("session")
    if mode in MODES and isinstance(session, dict):
        request.set_session({**session, MODE: mode})


def end_session(request: Request[Any, Any, Any]) -> None:
    request.clear_session()


def _session_uuid(request: Request[Any, Any, Any], name: str) -> uuid.UUID | None:
    # A cleared session is the Empty sentinel rather than a dict.
    session = request.scope.get("session")
    value = session.get(name) if isinstance(session, dict) else None
    try:
        return uuid.UUID(value) if isinstance(value, str) else None
    except ValueError:
        return None


async def signed_in_member(
    request: Request[Any, Any, Any], db_session: AsyncSession
) -> Member | None:
    """The member the session names, or None when it names nobody who still has access."""
    user_id = _session_uuid(request, USER_ID)
    tenant_id = _session_uuid(request, TENANT_ID)
    if user_id is None or tenant_id is None:
        return None
    user = await accounts.get_user(db_session, user_id=user_id)
    session = request.scope.get("session")
    generation = session.get(GENERATION) if isinstance(session, dict) else None
    if user is None or generation != user.session_generation:
        return None
    memberships = tuple(await accounts.tenants_of(db_session, user_id=user_id))
    access = next((access for access in memberships if access.tenant.id == tenant_id), None)
    if access is None:
        return None
    # A tenant that requires SSO takes no password session from its members (owners
    # excepted), including one begun before it required it (app/auth/sso/signin.py).
    via_sso = isinstance(session, dict) and session.get(SSO_TENANT) == str(tenant_id)
    if (
        access.role != roles.OWNER
        and not via_sso
        and await sso_config.tenants_requiring_sso(db_session, tenant_ids=[tenant_id])
    ):
        return None
    mode = session.get(MODE) if isinstance(session, dict) else None
    if mode not in MODES:
        # Until the tenant may use live keys, its only data is test data: show that first.
        live = await verification.live_keys_allowed(db_session, tenant_id=tenant_id)
        mode = "live" if live else "test"
    return Member(
        user=user, tenant=access.tenant, role=access.role, mode=mode, memberships=memberships
    )


async def provide_member(request: Request[Any, Any, Any], db_session: DbSession) -> Member:
    """Dependency of every signed-in page."""
    member = await signed_in_member(request, db_session)
    if member is None:
        end_session(request)
        raise SignInRequired
    if member.role in QUOTA_ALERT_ROLES and not is_htmx(request):
        # Full pages only: htmx answers are fragments, which the layout does not wrap.
        found = await usage_warnings.alerts(
            db_session, tenant_id=member.tenant.id, plan=member.tenant.plan
        )
        member = replace(member, quota_alerts=tuple(found))
    return member


SignedInMember: TypeAlias = NamedDependency[Member]


def not_allowed(member: Member, action: str = "manage_keys") -> PermissionDeniedException:
    """The 403 for a member whose role the services refused (app/auth/roles.py)."""
    refused = roles.PERMISSIONS[action][1]
    return PermissionDeniedException(
        f"Your role in {member.tenant.name} ({member.role}) {refused}."
    )


def refused(member: Member, error: roles.RoleNotAllowed) -> PermissionDeniedException:
    """The 403 for a RoleNotAllowed a service raised, in the member's words."""
    return PermissionDeniedException(
        f"Your role in {member.tenant.name} ({member.role}) {error.refused}."
    )


def require(member: Member, action: str) -> None:
    """Refuse (403) a member whose role may not take `action`, before a form is read; the
    service refuses it again (app/auth/roles.py)."""
    if not member.may(action):
        raise not_allowed(member, action)
