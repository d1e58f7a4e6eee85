"""How the dashboard answers failures: HTML pages for people instead of problem+json."""

from __future__ import annotations

from typing import Any

import structlog
from litestar import Request, Response
from litestar.exceptions import HTTPException
from litestar.types import ExceptionHandlersMap

from admin_ui.pages import SECURITY_HEADERS, page, see_other
from admin_ui.session import SignInRequired
from app.auth.passwords import PasswordsBusy

log = structlog.get_logger(__name__)

_TITLES = {
    400: "Bad request",
    403: "Not allowed",
    404: "Not found",
    405: "Method not allowed",
    413: "Too large",
    500: "Something went wrong",
    503: "Busy",
}
# Seconds a sign-in refused because too many wait for their password check should wait.
BUSY_RETRY_SECONDS = 5
# The framework's wording for a failed CSRF check means nothing to a person.
_CSRF_FAILURE = "CSRF token verification failed"
_CSRF_MESSAGE = (
    "This form has expired or was sent from another site. Reload the page and try again."
)


def sign_in_required(request: Request[Any, Any, Any], _: SignInRequired) -> Response[Any]:
    return see_other(request, "/signin")


def _error_page(status: int, message: str, headers: dict[str, str] | None = None) -> Response[Any]:
    response = page(
        "error.html",
        status_code=status,
        title=_TITLES.get(status, "Request refused"),
        message=message,
        status=status,
    )
    # Handlers' answers skip the router's response headers: add them here.
    response.headers.update({**SECURITY_HEADERS, "Cache-Control": "no-store", **(headers or {})})
    return response


def http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    message = _CSRF_MESSAGE if exc.detail == _CSRF_FAILURE else exc.detail
    return _error_page(exc.status_code, message, exc.headers)


def passwords_busy(request: Request[Any, Any, Any], _: PasswordsBusy) -> Response[Any]:
    return _error_page(
        503,
        "Herald is checking many passwords right now. Please try again in a few seconds.",
        {"Retry-After": str(BUSY_RETRY_SECONDS)},
    )


def unexpected_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    request_id = request.scope.get("state", {}).get("request_id", "")
    log.exception("unhandled dashboard error", path=request.url.path, exc_info=exc)
    return _error_page(500, f"Something went wrong on our side. Reference: {request_id}.")


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    SignInRequired: sign_in_required,
    PasswordsBusy: passwords_busy,
    HTTPException: http_error,
    Exception: unexpected_error,
}
