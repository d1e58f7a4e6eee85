"""Bearer API-key authentication for /v1, and the guards of its routes: scopes, live mode,
and which routes an inbox token may use at all."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult

from app.auth.keys import KeyRejected, Principal, authenticate
from app.inbox.tokens import PREFIX as INBOX_TOKEN_PREFIX
from app.inbox.tokens import RecipientPrincipal, TokenRejected
from app.problems import Problem

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="herald"'}


def _unauthorized(detail: str) -> NotAuthorizedException:
    return NotAuthorizedException(detail=detail, headers=CHALLENGE)


class ApiKeyAuthenticationMiddleware(AbstractAuthenticationMiddleware):
    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        header = connection.headers.get("authorization")
        if not header:
            raise _unauthorized(
                "No API key: send it as `Authorization: Bearer hk_live_…` (or hk_test_…)."
            )
        scheme, _, secret = header.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise _unauthorized("The Authorization header must be `Bearer <API key>`.")
        state = connection.app.state
        if secret.strip().startswith(INBOX_TOKEN_PREFIX):
            try:
                return AuthenticationResult(
                    user=state.inbox_tokens.verify(secret.strip()), auth=None
                )
            except TokenRejected as rejected:
                raise _unauthorized(str(rejected)) from None
        async with state.sessions() as session:
            try:
                principal = await authenticate(session, secret.strip(), state.key_cache)
            except KeyRejected as rejected:
                raise _unauthorized(str(rejected)) from None
        return AuthenticationResult(user=principal, auth=None)


def _options(connection: ASGIConnection[Any, Any, Any, Any]) -> bool:
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
        if _options(connection):
            return
        principal: Principal = connection.user  # or a RecipientPrincipal, whose only scope is inbox
        if scope not in principal.scopes:
            raise Problem(
                403,
                "insufficient_scope",
                f"This API key lacks the `{scope}` scope this endpoint requires.",
                required_scope=scope,
            )

    return guard


#: Set in a route's `opt` when an inbox token (`hit_…`) may call it; no other route admits one.
INBOX_ROUTE = "inbox_route"


async def inbox_tokens_only_where_allowed(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """Refuse an inbox token on every route but the inbox's own (set on the /v1 router)."""
    if _options(connection):
        return
    if isinstance(connection.user, RecipientPrincipal) and not handler.opt.get(INBOX_ROUTE):
        raise Problem(
            403,
            "forbidden",
            "An inbox token may only read and mark its own recipient's inbox; "
            "this endpoint needs an API key.",
        )


async def live_mode_required(
    connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler
) -> None:
    """Refuse test keys on what belongs to live sending (provider configs, tenant settings)."""
    if _options(connection):
        return
    principal: Principal = connection.user
    if principal.mode != "live":
        raise Problem(
            403,
            "live_mode_required",
            "This acts on live sending, which a test key cannot see or change; "
            "use a live key (test mode always delivers to the sandbox).",
        )
