"""The audience filter language: which of a tenant's recipients a filter matches.

A filter is JSON, tagged by `op`:

- `{"op": "equals", "field": F, "value": V}` and `{"op": "in", "field": F, "values": [V…]}`
- `{"op": "exists", "field": F}`: the field is set (for `data.…`, present, even as null)
- `{"op": "and", "filters": […]}`, `{"op": "or", "filters": […]}`, `{"op": "not", "filter": …}`

F is a recipient field (`external_id`, `email`, `phone`, `locale`, `timezone`) or a path into
the recipient's own data (`data.plan`, `data.address.country`); V is a string, number or
boolean (a string for the recipient fields). `email` compares without case; a number equals
its other spellings (`1` and `1.0`); `not` matches what its filter does not, a recipient
lacking the field included.

A filter is compiled to one SQL expression with bound parameters, never to SQL text built
from it, and it is bounded before it is compiled (`MAX_NODES`, `MAX_DEPTH`, `MAX_VALUES`):
what a tenant's filter can cost is one scan of its own recipients, under a statement
timeout (app/audiences/service.py).
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import msgspec
from sqlalchemy import ColumnElement, and_, false, func, literal, or_, true
from sqlalchemy.dialects.postgresql import JSONB

from app.recipients.models import Recipient

MAX_NODES = 50  # filters in one filter, all levels counted
MAX_DEPTH = 6  # `and`/`or`/`not` inside one another
MAX_VALUES = 1_000  # values of one `in`
MAX_FILTERS = 20  # filters of one `and` or `or`
MAX_VALUE_LENGTH = 1_000  # characters of a string value
MAX_PATH_SEGMENTS = 5  # `data.a.b.c.d.e` at most

COLUMNS = ("external_id", "email", "phone", "locale", "timezone")
_SEGMENT = r"[A-Za-z0-9_-]{1,64}"
FIELD_PATTERN = rf"^(?:{'|'.join(COLUMNS)}|data(?:\.{_SEGMENT}){{1,{MAX_PATH_SEGMENTS}}})$"
_FIELD = re.compile(FIELD_PATTERN)

Field = Annotated[
    str,
    msgspec.Meta(
        pattern=FIELD_PATTERN,
        description="A recipient field, or `data.` and a path of at most "
        f"{MAX_PATH_SEGMENTS} keys into the recipient's data.",
        examples=["email", "locale", "data.plan", "data.address.country"],
    ),
]
Value = (
    Annotated[str, msgspec.Meta(max_length=MAX_VALUE_LENGTH)]
    | Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
    | float
    | bool
)


class Equals(msgspec.Struct, tag_field="op", tag="equals", forbid_unknown_fields=True):
    field: Field
    value: Value


class In(msgspec.Struct, tag_field="op", tag="in", forbid_unknown_fields=True):
    field: Field
    values: Annotated[list[Value], msgspec.Meta(min_length=1, max_length=MAX_VALUES)]


class Exists(msgspec.Struct, tag_field="op", tag="exists", forbid_unknown_fields=True):
    field: Field


class And(msgspec.Struct, tag_field="op", tag="and", forbid_unknown_fields=True):
    filters: Annotated[list[Filter], msgspec.Meta(min_length=1, max_length=MAX_FILTERS)]


class Or(msgspec.Struct, tag_field="op", tag="or", forbid_unknown_fields=True):
    filters: Annotated[list[Filter], msgspec.Meta(min_length=1, max_length=MAX_FILTERS)]


class Not(msgspec.Struct, tag_field="op", tag="not", forbid_unknown_fields=True):
    filter: Filter


Filter = Equals | In | Exists | And | Or | Not


class FilterInvalid(ValueError):
    """A filter that cannot be used; `field` names where, from the filter's top (`filters[2]`)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def check(node: Filter) -> None:
    """Refuse a filter past the bounds, or one comparing a recipient field with a non-string."""
    count = _check(node, "", 1)
    if count > MAX_NODES:
        raise FilterInvalid("", f"the filter has {count} filters in all; at most {MAX_NODES}")


def _check(node: Filter, at: str, depth: int) -> int:
    if depth > MAX_DEPTH:
        raise FilterInvalid(at, f"filters are nested at most {MAX_DEPTH} deep")
    if isinstance(node, And | Or):
        return 1 + sum(
            _check(inner, _joined(at, f"filters[{i}]"), depth + 1)
            for i, inner in enumerate(node.filters)
        )
    if isinstance(node, Not):
        return 1 + _check(node.filter, _joined(at, "filter"), depth + 1)
    if not _FIELD.match(node.field):  # msgspec checked it; a Python caller may not have
        raise FilterInvalid(_joined(at, "field"), f"not a field: {node.field!r}")
    if node.field in COLUMNS:
        values = [node.value] if isinstance(node, Equals) else getattr(node, "values", [])
        for index, value in enumerate(values):
            if not isinstance(value, str):
                where = "value" if isinstance(node, Equals) else f"values[{index}]"
                raise FilterInvalid(_joined(at, where), f"{node.field} is compared with strings")
    return 1


def _joined(at: str, name: str) -> str:
    return f"{at}.{name}" if at else name


def compile_filter(node: Filter) -> ColumnElement[bool]:
    """The filter as a condition on `recipients` (check it first)."""
    if isinstance(node, And):
        return and_(*(compile_filter(inner) for inner in node.filters))
    if isinstance(node, Or):
        return or_(*(compile_filter(inner) for inner in node.filters))
    if isinstance(node, Not):
        # Not TRUE rather than NOT: a recipient lacking the field (NULL) is matched by `not`.
        return compile_filter(node.filter).is_not(true())
    if node.field in COLUMNS:
        column: ColumnElement[str | None] = getattr(Recipient, node.field)
        if isinstance(node, Exists):
            return column.is_not(None)
        if node.field == "email":
            column = func.lower(column)
        values = [node.value] if isinstance(node, Equals) else node.values
        texts = [str(v).lower() if node.field == "email" else str(v) for v in values]
        return column == texts[0] if len(texts) == 1 else column.in_(texts)
    found = Recipient.data[tuple(node.field.split(".")[1:])]
    if isinstance(node, Exists):
        return found.is_not(None)
    values = [node.value] if isinstance(node, Equals) else node.values
    if not values:
        return false()
    # Each value as JSON, compared as jsonb: 1 equals 1.0, "1" does not equal 1.
    wanted = [literal(value, JSONB) for value in values]  # serialised as JSON when bound
    return found == wanted[0] if len(wanted) == 1 else found.in_(wanted)


# The OpenAPI document's example of a filter (app/audiences/schemas.py).
EXAMPLE: dict[str, Any] = {
    "op": "and",
    "filters": [
        {"op": "equals", "field": "data.plan", "value": "pro"},
        {"op": "in", "field": "locale", "values": ["fr", "fr-CA"]},
        {"op": "not", "filter": {"op": "exists", "field": "data.churned_at"}},
    ],
}
