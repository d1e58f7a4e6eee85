"""Bearer API-key authentication for /v1, and the guards of its routes: scopes, live mode.

API keys only: the inbox's routes check inbox tokens themselves (app/inbox/guard.py), and
hand any other bearer to `authenticate_api_key` here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult

from app.auth.keys import KeyRejected, Principal, authenticate
from app.problems import Problem

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="herald"'}


def unauthorized(detail: str) -> NotAuthorizedException:
    return NotAuthorizedException(detail=detail, headers=CHALLENGE)


def bearer_secret(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    """The credential of `Authorization: Bearer <credential>`; a 401 without one."""
    header = connection.headers.get("authorization")
    if not header:
        raise unauthorized(
            "No API key: send it as `Authorization: Bearer hk_live_…` (or hk_test_…)."
        )
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise unauthorized("The Authorization header must be `Bearer <API key>`.")
    return secret.strip()


async def authenticate_api_key(
    connection: ASGIConnection[Any, Any, Any, Any], secret: str
) -> Principal:
    """The principal of an API key; a 401 naming why when it is refused."""
    state = connection.app.state
    try:
        return await authenticate(state.sessions, secret, state.key_cache)
    except KeyRejected as rejected:
        raise unauthorized(str(rejected)) from None


class ApiKeyAuthenticationMiddleware(AbstractAuthenticationMiddleware):
    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        principal = await authenticate_api_key(connection, bearer_secret(connection))
        return AuthenticationResult(user=principal, auth=None)


def is_options(connection: ASGIConnection[Any, Any, Any, Any]) -> bool:
    """True for OPTIONS, which only the framework's own handler answers (no route of ours
    declares it): it lists the route's methods in `Allow` and shows nothing of a tenant, and
    the authentication middleware lets it through without a key, as browsers send CORS
    preflights. A guard reading `connection.user` then would find none: let it pass."""
    return connection.scope.get("method") == "OPTIONS"


def requires_scope(
    scope: str,
) -> Callable[[ASGIConnection[Any, Any, Any, Any], BaseRouteHandler], Awaitable[None]]:
    # A coroutine: Litestar runs a plain function guard in a worker thread, on every call.
    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        if is_options(connection):
            return
        principal: Principal = connection.user
        if scope not in principal.scopes:
            raise Problem(
                403,
                "insufficient_scope",
                f"This API key lacks the `{scope}` scope this endpoint requires.",
                required_scope=scope,
            )

    return guard


async def live_mode_required(
    connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler
) -> None:
    """Refuse test keys on what belongs to live sending (provider configs, tenant settings)."""
    if is_options(connection):
        return
    principal: Principal = connection.user
    if principal.mode != "live":
        raise Problem(
            403,
            "live_mode_required",
            "This acts on live sending, which a test key cannot see or change; "
            "use a live key (test mode always delivers to the sandbox).",
        )
