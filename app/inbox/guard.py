"""Who may use an inbox: checked by the inbox itself, not by the API-key middleware.

An inbox token (`hit_…`, app/inbox/tokens.py) is what a tenant's front-end holds to read one
recipient's inbox, and nothing else. The routes that read and mark an inbox sit on a router
of their own (app/main.py), authenticated by `InboxAuthentication`: an inbox token is
verified here, any other bearer is an API key (app/auth/middleware.py). Their guard
`inbox_reader` then admits the token (the controller checks that its recipient is the one in
the path, and that it was not revoked) or an API key with `read`.

On every other /v1 route the API-key middleware knows API keys only; `refuse_inbox_tokens`,
in front of it, answers an inbox token there with 403 (401 when it is not a valid one).
"""

from __future__ import annotations

from typing import Any

from litestar.connection import ASGIConnection, Request
from litestar.enums import ScopeType
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult
from litestar.types import ASGIApp, Receive, Scope, Send

from app.auth.middleware import (
    authenticate_api_key,
    bearer_secret,
    is_options,
    requires_scope,
    unauthorized,
)
from app.inbox.tokens import PREFIX, RecipientPrincipal, TokenRejected
from app.problems import Problem


def is_inbox_token(secret: str) -> bool:
    return secret.startswith(PREFIX)


def verify_token(connection: ASGIConnection[Any, Any, Any, Any], secret: str) -> RecipientPrincipal:
    """The recipient an inbox token acts for; a 401 naming why when it is refused."""
    try:
        principal: RecipientPrincipal = connection.app.state.inbox_tokens.verify(secret)
    except TokenRejected as rejected:
        raise unauthorized(str(rejected)) from None
    return principal


class InboxAuthentication(AbstractAuthenticationMiddleware):
    """The inbox routes' authentication: an inbox token, or else an API key."""

    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        secret = bearer_secret(connection)
        if is_inbox_token(secret):
            return AuthenticationResult(user=verify_token(connection, secret), auth=None)
        return AuthenticationResult(user=await authenticate_api_key(connection, secret), auth=None)


_READ_SCOPE = requires_scope("read")


async def inbox_reader(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """A recipient's inbox token, or an API key with `read`, may use an inbox."""
    if is_options(connection) or isinstance(connection.user, RecipientPrincipal):
        return
    await _READ_SCOPE(connection, handler)


def refuse_inbox_tokens(app: ASGIApp) -> ASGIApp:
    """Refuse an inbox token on the routes of API keys (in front of their authentication)."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        # The raw header, not a Request's parsed ones: this runs on every API request.
        header = _authorization(scope) if scope["type"] == ScopeType.HTTP else ""
        scheme, _, secret = header.partition(" ")
        if scheme.lower() == "bearer" and is_inbox_token(secret.strip()):
            verify_token(Request(scope), secret.strip())
            raise Problem(
                403,
                "forbidden",
                "An inbox token may only read and mark its own recipient's inbox; "
                "this endpoint needs an API key.",
            )
        await app(scope, receive, send)

    return middleware


def _authorization(scope: Scope) -> str:
    """The first Authorization header, as a Request would read it (latin-1)."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            return value.decode("latin-1")
    return ""
