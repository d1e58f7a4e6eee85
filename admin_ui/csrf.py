"""CSRF tokens of the dashboard's forms: bound to the session, and expiring.

Every dashboard session, a visitor's not yet signed in too, holds a random binding id
(`csrf` in the session cookie); signing in, signing up and signing out start a new session,
hence a new id. A token is `<issued at>.<HMAC(binding id, issued at)>`: it is accepted only
by the session it was made for, and for `TOKEN_SECONDS`. So a token captured from a page,
an old session or another browser is refused, and a token whose cookie an attacker planted
(Litestar's double-submit tokens could be, from a sibling subdomain) is worth nothing.

Only the dashboard's router has this middleware, inside its session middleware: /v1 and
/webhooks, authenticated by keys and signatures rather than cookies, are outside it by
construction rather than by a list of exclusions. It sets the token that the templates'
`csrf_input` and `csrf_token()` render, and refuses an unsafe request without a valid
token (`_csrf_token` form field or `x-csrftoken` header) with 403, which admin_ui/errors.py
turns into "this form has expired".
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from typing import Any

from litestar.connection import Request
from litestar.enums import RequestEncodingType, ScopeType
from litestar.exceptions import PermissionDeniedException
from litestar.types import ASGIApp, Receive, Scope, Send
from litestar.utils.scope.state import ScopeState

SESSION_KEY = "csrf"
FORM_FIELD = "_csrf_token"
HEADER = "x-csrftoken"
TOKEN_SECONDS = 4 * 3600  # a page left open for an afternoon still works
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
FAILURE = "CSRF token verification failed"


class CsrfTokens:
    def __init__(self, secret: bytes, lifetime: int = TOKEN_SECONDS) -> None:
        self._key = hmac.new(secret, b"herald dashboard csrf", hashlib.sha256).digest()
        self.lifetime = lifetime

    def issue(self, binding: str, now: float | None = None) -> str:
        issued = int(time.time() if now is None else now)
        return f"{issued}.{self._mac(binding, issued)}"

    def valid(self, token: str, binding: str, now: float | None = None) -> bool:
        issued_text, _, mac = token.partition(".")
        if not issued_text.isdigit() or len(issued_text) > 12 or not binding:
            return False
        issued = int(issued_text)
        age = (time.time() if now is None else now) - issued
        return 0 <= age <= self.lifetime and hmac.compare_digest(mac, self._mac(binding, issued))

    def _mac(self, binding: str, issued: int) -> str:
        message = f"{binding}|{issued}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()


def csrf_middleware(tokens: CsrfTokens) -> Callable[[ASGIApp], ASGIApp]:
    """The middleware for the dashboard's router (after its session middleware)."""

    def wrap(app: ASGIApp) -> ASGIApp:
        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != ScopeType.HTTP:
                await app(scope, receive, send)
                return
            session = scope.get("session")
            if not isinstance(session, dict):
                session = scope["session"] = {}
            binding = session.get(SESSION_KEY)
            if not isinstance(binding, str) or not binding:
                binding = session[SESSION_KEY] = secrets.token_urlsafe(16)
            if scope["method"] not in SAFE_METHODS:
                presented = await _presented_token(scope, receive)
                if presented is None or not tokens.valid(presented, binding):
                    raise PermissionDeniedException(FAILURE)
            ScopeState.from_scope(scope).csrf_token = tokens.issue(binding)
            await app(scope, receive, send)

        return middleware

    return wrap


async def _presented_token(scope: Scope, receive: Receive) -> str | None:
    request: Request[Any, Any, Any] = scope["litestar_app"].request_class(scope, receive)
    token = request.headers.get(HEADER)
    if token:
        return token
    content_type, _ = request.content_type
    if content_type in (RequestEncodingType.URL_ENCODED, RequestEncodingType.MULTI_PART):
        value = (await request.form()).get(FORM_FIELD)
        return value if isinstance(value, str) else None
    return None
