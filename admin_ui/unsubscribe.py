"""The pages a recipient reaches from an e-mail's unsubscribe link: /u/{token}.

Public: no sign-in, no session cookie, no CSRF token. The token in the path is the
capability (app/unsubscribe/tokens.py), and RFC 8058 requires that a mail provider's
one-click POST, which carries no cookie and no token of ours, works. The router mounting
these pages (admin_ui/app.py) therefore has neither the session nor the CSRF middleware.

`POST /u/{token}` unsubscribes at once and answers 200 with a short page, never a redirect
(RFC 8058), whatever its body: `List-Unsubscribe=One-Click` from a mail provider, the
confirmation page's form, or nothing. `GET /u/{token}` only shows a button: mail scanners
fetch links, and a fetch must change nothing. `/u/{token}/preferences` is the recipient's
preference centre, a plain form. Any token that does not verify, or whose recipient is gone,
is a 404 page.
"""

from __future__ import annotations

from typing import Any

import structlog
from litestar import Controller, Request, Response, get, post
from litestar.exceptions import HTTPException, NotFoundException, ValidationException
from litestar.params import FromPath
from litestar.types import ExceptionHandlersMap

from admin_ui.pages import SECURITY_HEADERS, form_text, form_texts, page
from app.dependencies import DbSession
from app.unsubscribe import service
from app.unsubscribe.service import CENTRE_CHANNELS, MAX_CENTRE_CATEGORIES
from app.unsubscribe.tokens import TokenClaims, UnsubscribeTokens

log = structlog.get_logger(__name__)

CHANNEL_NAMES = {"email": "E-mail", "sms": "SMS", "push": "Push", "inbox": "In-app"}
# The links carry a capability: no page here may pass its address on in a Referer.
PUBLIC_HEADERS = {**SECURITY_HEADERS, "Referrer-Policy": "no-referrer"}
_NOT_FOUND = "This link does not work: it was copied incompletely, or is no longer valid."
_TITLES = {
    400: "Bad request",
    404: "Link not found",
    405: "Not allowed",
    413: "Too large",
    422: "Not accepted",
}


def _tokens(request: Request[Any, Any, Any]) -> UnsubscribeTokens:
    tokens: UnsubscribeTokens = request.app.state.unsubscribe_tokens
    return tokens


async def _claims(
    request: Request[Any, Any, Any], db_session: DbSession, token: str
) -> TokenClaims:
    """The token's claims when it is genuine and its recipient still there; else 404."""
    claims = _tokens(request).verify(token)
    if claims is None or not await service.exists(db_session, claims):
        raise NotFoundException(_NOT_FOUND)
    return claims


class UnsubscribeController(Controller):
    path = "/u"

    @get("/{token:str}")
    async def confirm(
        self, request: Request[Any, Any, Any], db_session: DbSession, token: FromPath[str]
    ) -> Response[Any]:
        claims = await _claims(request, db_session, token)
        name = await service.category_name(db_session, claims)
        return page("unsubscribe.html", token=token, category_name=name)

    @post("/{token:str}", status_code=200)
    async def one_click(
        self, request: Request[Any, Any, Any], db_session: DbSession, token: FromPath[str]
    ) -> Response[Any]:
        claims = await _claims(request, db_session, token)
        # The body does not matter (RFC 8058's is List-Unsubscribe=One-Click; some send
        # none, or something else): the POST itself is the request. The page's form says
        # it came from there; a body that cannot be read as a form says nothing.
        try:
            came_from = form_text(await request.form(), "from")
        except HTTPException:
            came_from = ""
        via = "page" if came_from == "page" else "one_click"
        await service.unsubscribe(db_session, claims, via=via)
        await db_session.commit()
        name = await service.category_name(db_session, claims)
        return page("unsubscribe.html", token=token, category_name=name, done=True)

    @get("/{token:str}/preferences")
    async def preferences(
        self, request: Request[Any, Any, Any], db_session: DbSession, token: FromPath[str]
    ) -> Response[Any]:
        claims = await _claims(request, db_session, token)
        centre = await service.preference_centre(db_session, claims)
        return _centre_page(token, centre)

    @post("/{token:str}/preferences", status_code=200)
    async def save(
        self, request: Request[Any, Any, Any], db_session: DbSession, token: FromPath[str]
    ) -> Response[Any]:
        claims = await _claims(request, db_session, token)
        form = await request.form()
        # An empty form would switch everything off (no box ticked): only the centre's own
        # form, which says so, is taken as one.
        if form_text(form, "form") != "preferences":
            raise ValidationException("This is not the preference centre's form.")
        # Bounded by what the centre can show: anything beyond is not a switch of it.
        ticked = form_texts(form, "on")[: MAX_CENTRE_CATEGORIES * len(CENTRE_CHANNELS)]
        enabled = [value.partition(":")[::2] for value in ticked]
        centre = await service.save_preferences(db_session, claims, enabled=enabled)
        await db_session.commit()
        return _centre_page(token, centre, saved=True)


def _centre_page(
    token: str, centre: service.PreferenceCentre | None, *, saved: bool = False
) -> Response[Any]:
    if centre is None:
        raise NotFoundException(_NOT_FOUND)
    return page(
        "preferences.html",
        token=token,
        centre=centre,
        channels=CENTRE_CHANNELS,
        channel_names=CHANNEL_NAMES,
        saved=saved,
    )


def _error_page(status: int, message: str) -> Response[Any]:
    response = page(
        "unsubscribe_error.html",
        status_code=status,
        status=status,
        title=_TITLES.get(status, "Something went wrong"),
        message=message,
    )
    # Handlers' answers skip the router's response headers: add them here.
    response.headers.update({**PUBLIC_HEADERS, "Cache-Control": "no-store"})
    return response


def _http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    return _error_page(exc.status_code, exc.detail)


def _unexpected_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    request_id = request.scope.get("state", {}).get("request_id", "")
    log.exception("unhandled unsubscribe page error", exc_info=exc)
    return _error_page(500, f"Something went wrong on our side. Reference: {request_id}.")


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    HTTPException: _http_error,
    Exception: _unexpected_error,
}
