"""Limits every request's input meets before any handler sees it, checked once for all routes.

- A JSON body nests at most `MAX_JSON_DEPTH` levels of arrays and objects (the body itself is
  the first): deeper ones would exhaust the decoder's stack, and no endpoint needs them.
- No string of a JSON body (member names included), form, query string or path holds NUL
  (U+0000): PostgreSQL's text and jsonb refuse it, so such a request could never succeed,
  and naming the field here beats a database error wherever the value lands.

The app reads bodies with `CheckedRequest` and runs `refuse_nul_parameters` before every
handler (app/main.py).
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request
from litestar.datastructures import FormMultiDict
from litestar.plugins.htmx import HTMXRequest
from litestar.types import Empty

from app.problems import Problem, field_error

MAX_JSON_DEPTH = 32
NUL = "\x00"
NUL_MESSAGE = "must not contain the NUL character (\\u0000)"

_decoder = msgspec.json.Decoder()
_ESCAPED_NUL = b"\\u0000"  # JSON strings cannot hold a raw NUL byte: only this escape


class CheckedRequest(HTMXRequest):
    """The app's request class: its JSON or form body is read within the limits above.

    An HTMXRequest, which the dashboard's htmx plugin would otherwise make the app's class.
    """

    __slots__ = ()

    async def json(self) -> Any:
        if self._json is Empty:
            self._json = decode_json_body(await self.body())
        return self._json

    async def form(self) -> FormMultiDict:
        form = await super().form()
        for name, value in form.multi_items():
            if NUL in name or (isinstance(value, str) and NUL in value):
                raise field_error(name, NUL_MESSAGE)
        return form


def decode_json_body(body: bytes) -> Any:
    """The decoded body, or a problem: invalid JSON, nested too deep, or a NUL in a string."""
    try:
        value = _decoder.decode(body or b"null")
    except RecursionError:
        raise too_deep() from None
    except msgspec.DecodeError as error:  # includes numbers out of range
        raise Problem(400, "invalid_json", f"The body is not valid JSON: {error}.") from None
    # Only bodies that could break a limit are walked: most bodies have few brackets.
    if _ESCAPED_NUL in body or body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH:
        _check(value, "", 1)
    return value


def too_deep() -> Problem:
    return Problem(
        400,
        "nesting_too_deep",
        f"The body nests arrays and objects more than {MAX_JSON_DEPTH} levels deep (the body "
        f"itself is the first level); flatten it.",
        max_depth=MAX_JSON_DEPTH,
    )


def _check(value: Any, path: str, depth: int) -> None:
    """Walk a decoded body; `path` names a value as errors[].field does (`data.items[2]`)."""
    if isinstance(value, str):
        if NUL in value:
            raise field_error(path or "body", NUL_MESSAGE)
    elif isinstance(value, dict):
        if depth > MAX_JSON_DEPTH:
            raise too_deep()
        for key, member in value.items():
            member_path = f"{path}.{key}" if path else key
            if NUL in key:
                raise field_error(member_path, f"the member name {NUL_MESSAGE}")
            _check(member, member_path, depth + 1)
    elif isinstance(value, list):
        if depth > MAX_JSON_DEPTH:
            raise too_deep()
        for index, item in enumerate(value):
            _check(item, f"{path}[{index}]", depth + 1)


async def refuse_nul_parameters(request: Request[Any, Any, Any]) -> None:
    """Before every handler: a path or query parameter holding NUL is a 422 naming it.

    A coroutine: Litestar runs a plain function hook in a worker thread, on every request."""
    for name, value in request.path_params.items():
        if isinstance(value, str) and NUL in value:
            raise field_error(name, NUL_MESSAGE)
    for name, value in request.query_params.multi_items():
        if NUL in name or NUL in value:
            raise field_error(name, NUL_MESSAGE)
