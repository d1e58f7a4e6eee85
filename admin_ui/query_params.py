"""Reading a page's query parameters bounded: a value that is too long, not of its kind or
not among the choices is a 422 page naming the parameter, never a 500 or a silent default."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, time
from typing import Any

from litestar import Request
from litestar.exceptions import HTTPException

MAX_PARAMETER = 200  # characters of any one query parameter
CURSOR_MAX_LENGTH = 36  # a UUID's text: the id of the last row shown


def bad_input(name: str, message: str) -> HTTPException:
    """The 422 for a query parameter or form field the page cannot take."""
    return HTTPException(status_code=422, detail=f"{name}: {message}")


def read_cursor(cursor: str) -> uuid.UUID | None:
    """A keyset cursor (the id of the last row shown), or None for the first page."""
    if not cursor:
        return None
    if len(cursor) > CURSOR_MAX_LENGTH:
        raise bad_input("cursor", "not a cursor of this list")
    try:
        return uuid.UUID(cursor)
    except ValueError:
        raise bad_input("cursor", "not a cursor of this list") from None


def query_text(request: Request[Any, Any, Any], name: str, max_length: int = MAX_PARAMETER) -> str:
    """The parameter's text, stripped; empty when absent."""
    value = request.query_params.get(name) or ""
    if len(value) > max_length:
        raise bad_input(name, f"at most {max_length} characters")
    if "\x00" in value:
        raise bad_input(name, "must not contain the NUL character")
    return value.strip()


def query_uuid(request: Request[Any, Any, Any], name: str) -> uuid.UUID | None:
    value = query_text(request, name, 36)
    if not value:
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        raise bad_input(name, "not an id Herald gave") from None


def query_choice(
    request: Request[Any, Any, Any], name: str, choices: tuple[str, ...]
) -> str | None:
    value = query_text(request, name)
    if not value:
        return None
    if value not in choices:
        raise bad_input(name, f"one of {', '.join(choices)}")
    return value


def query_positive_int(request: Request[Any, Any, Any], name: str) -> int | None:
    value = query_text(request, name, 19)
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise bad_input(name, "a positive whole number")
    return int(value)


def query_day(request: Request[Any, Any, Any], name: str) -> datetime | None:
    """A day (YYYY-MM-DD) as its first moment in UTC."""
    value = query_text(request, name, 10)
    if not value:
        return None
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise bad_input(name, "a date as YYYY-MM-DD") from None
    if day.year < 2000 or day.year > 9998:
        raise bad_input(name, "a date between 2000 and 9998")
    return datetime.combine(day, time(0), tzinfo=UTC)
