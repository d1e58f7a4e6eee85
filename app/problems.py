"""RFC 9457 problem details: the one error shape of the API, with stable `type` URIs.

Every error, ours or the framework's (404, 405, validation, body too large, crashes), leaves
as `application/problem+json` with `type`, `title`, `status`, `detail`, `instance` and, for
invalid input, `errors: [{field, message}]` naming each offending field.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import msgspec
import structlog
from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    MethodNotAllowedException,
    NotAuthorizedException,
    NotFoundException,
    PermissionDeniedException,
    ValidationException,
)
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

PROBLEM_BASE = "https://herald.dev/problems/"
MEDIA_TYPE = "application/problem+json"

log = structlog.get_logger(__name__)

TITLES = {
    "bad_request": "Bad request",
    "invalid_json": "The body is not valid JSON",
    "nesting_too_deep": "The body nests too deeply",
    "unauthorized": "Authentication failed",
    "forbidden": "Permission denied",
    "not_found": "Not found",
    "method_not_allowed": "Method not allowed",
    "conflict": "Conflict",
    "payload_too_large": "Payload too large",
    "validation_error": "Invalid request",
    "rate_limited": "Too many requests",
    "internal_error": "Internal server error",
    "service_unavailable": "Service unavailable",
}

_STATUS_SLUGS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    422: "validation_error",
    429: "rate_limited",
    503: "service_unavailable",
}


class FieldError(msgspec.Struct):
    field: Annotated[
        str, msgspec.Meta(description="The offending field: `email`, `to[3].phone`, `limit`.")
    ]
    message: str


class ProblemDetails(msgspec.Struct, omit_defaults=True):
    """How every error of the API is answered (RFC 9457), as `application/problem+json`."""

    type: Annotated[
        str,
        msgspec.Meta(
            description=f"A stable URI naming the kind of error: {PROBLEM_BASE}<slug>.",
            examples=[PROBLEM_BASE + "validation_error"],
        ),
    ]
    title: str
    status: int
    detail: str
    instance: Annotated[str, msgspec.Meta(description="The path of the request.")]
    request_id: str | None = None
    errors: (
        Annotated[list[FieldError], msgspec.Meta(description="Each invalid field (422).")] | None
    ) = None


class Problem(HTTPException):
    """An error raised by Herald's own code, with its stable slug and offending fields."""

    def __init__(
        self,
        status_code: int,
        slug: str,
        detail: str,
        *,
        errors: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail=detail, status_code=status_code, headers=headers)
        self.slug = slug
        self.errors = errors
        self.extra_members = extra


def field_error(field: str, message: str, status_code: int = 422) -> Problem:
    """A 422 naming one offending field."""
    return Problem(
        status_code,
        "validation_error",
        f"{field}: {message}",
        errors=[{"field": field, "message": message}],
    )


def problem_response(
    request: Request[Any, Any, Any],
    status_code: int,
    slug: str,
    detail: str,
    *,
    errors: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Response[dict[str, Any]]:
    body = problem_body(request, status_code, slug, detail, errors=errors, extra=extra)
    return Response(body, status_code=status_code, media_type=MEDIA_TYPE, headers=headers)


def problem_body(
    request: Request[Any, Any, Any],
    status_code: int,
    slug: str,
    detail: str,
    *,
    errors: list[dict[str, str]] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A problem's members (RFC 9457), as a response or a batch item's `error` carries it."""
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + slug,
        "title": TITLES.get(slug, slug.replace("_", " ").capitalize()),
        "status": status_code,
        "detail": detail,
        "instance": request.url.path,
    }
    request_id = request.scope.get("state", {}).get("request_id")
    if request_id:
        body["request_id"] = request_id
    if errors:
        body["errors"] = errors
    if extra:
        body.update(extra)
    return body


_MSGSPEC_PATH = re.compile(r" - at `\$\.?(?P<path>[^`]*)`")
_NAMED_FIELD = re.compile(r"(?:missing required|unknown) field `(?P<name>[^`]+)`")


def conversion_error(error: msgspec.ValidationError, at: str) -> dict[str, str]:
    """What msgspec refused in a value found at `at` (`notifications[3]`), as errors[] names
    it: `notifications[3].to[0]`, `notifications[3].template` (missing or unknown)."""
    message, field = str(error), at
    match = _MSGSPEC_PATH.search(message)
    if match:
        message = message[: match.start()]
        field = _joined(field, match.group("path"))
    named = _NAMED_FIELD.search(message)
    if named:
        field = _joined(field, named.group("name"))
    return {"field": field, "message": message}


def _joined(field: str, path: str) -> str:
    if not path:
        return field
    return f"{field}{path}" if path.startswith("[") else f"{field}.{path}"


def _validation_errors(exc: ValidationException) -> list[dict[str, str]]:
    errors: list[dict[str, str]] = []
    for item in exc.extra if isinstance(exc.extra, list) else []:
        if not isinstance(item, dict):
            continue
        message = str(item.get("message", "invalid value"))
        field = str(item.get("key", ""))
        match = _MSGSPEC_PATH.search(message)
        if match:
            message = message[: match.start()]
            path = match.group("path")
            field = f"{field}.{path}" if field and field != "data" and path else path or field
        named = _NAMED_FIELD.search(message)
        if named:  # a missing or unknown member of the object `field` points at
            inner = named.group("name")
            # Litestar names the whole body "data"; below it, keys are paths into the body.
            field = inner if field in ("", "data") else f"{field}.{inner}"
        errors.append({"field": field or "body", "message": message})
    return errors


def _from_validation(request: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
    errors = _validation_errors(exc)
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors) or str(exc.detail)
    return problem_response(request, 422, "validation_error", detail, errors=errors)


def handle_http_exception(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    if isinstance(exc, Problem):
        return problem_response(
            request,
            exc.status_code,
            exc.slug,
            exc.detail,
            errors=exc.errors,
            headers=exc.headers,
            extra=exc.extra_members,
        )
    if isinstance(exc, ValidationException):
        return _from_validation(request, exc)
    if isinstance(exc, NotFoundException):
        return problem_response(request, 404, "not_found", f"Nothing is at {request.url.path}.")
    if isinstance(exc, MethodNotAllowedException):
        return problem_response(
            request,
            405,
            "method_not_allowed",
            f"{request.method} is not allowed on {request.url.path}.",
            headers=exc.headers,
        )
    if isinstance(exc, NotAuthorizedException | PermissionDeniedException):
        slug = "unauthorized" if isinstance(exc, NotAuthorizedException) else "forbidden"
        return problem_response(request, exc.status_code, slug, exc.detail, headers=exc.headers)
    if isinstance(exc, HTTPException):
        slug = _STATUS_SLUGS.get(
            exc.status_code, "bad_request" if exc.status_code < 500 else "internal_error"
        )
        detail = exc.detail
        if exc.status_code == 413:
            detail = "The request body is larger than this endpoint accepts."
        elif exc.status_code == 400 and "JSON is malformed" in detail:
            slug = "invalid_json"
        return problem_response(request, exc.status_code, slug, detail, headers=exc.headers)
    return handle_unexpected(request, exc)


def handle_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.exception("unhandled error", path=request.url.path, exc_info=exc)
    return problem_response(
        request,
        HTTP_500_INTERNAL_SERVER_ERROR,
        "internal_error",
        "Something went wrong on our side; the request id identifies it in our logs.",
    )


EXCEPTION_HANDLERS = {HTTPException: handle_http_exception, Exception: handle_unexpected}
