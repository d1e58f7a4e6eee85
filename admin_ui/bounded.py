"""Query parameters and form fields read within bounds: a bad one is a 422 naming it."""

from __future__ import annotations

import uuid

from litestar.exceptions import HTTPException

CURSOR_MAX_LENGTH = 36  # a UUID's text


def invalid(field: str, message: str) -> HTTPException:
    """The 422 for a bad query parameter or form field, naming it."""
    return HTTPException(status_code=422, detail=f"{field}: {message}")


def read_cursor(cursor: str) -> uuid.UUID | None:
    """A keyset cursor (the id of the last row shown), or None for the first page."""
    if not cursor:
        return None
    if len(cursor) > CURSOR_MAX_LENGTH:
        raise invalid("cursor", "not a cursor of this list")
    try:
        return uuid.UUID(cursor)
    except ValueError:
        raise invalid("cursor", "not a cursor of this list") from None
