"""Finding a tenant's recipients by the beginning of their external id, e-mail or phone.

What a person types in the dashboard's search box: `ann`, `ann@acme`, `+4420`. Each field is
searched through its own index as a range scan, so a page costs the rows it shows whatever
the tenant's size, and no plan depends on statistics (PostgreSQL here runs without them):
- external id: the unique key (tenant_id, mode, external_id). Erased recipients are renamed
  `erased:<id>`, a prefix no live recipient may have (validation.py), so they are left out
  by that prefix rather than by `erased_at IS NULL`, which would open the partial
  ix_recipients_tenant_id_mode_id to the search (see lookups.py);
- e-mail: ix_recipients_tenant_id_mode_email on lower(email), rows with an e-mail only;
- phone: ix_recipients_tenant_id_mode_phone, E.164 as stored.
Erased recipients have neither e-mail nor phone, so the last two never find them.

A prefix is a range `[prefix, prefix || U+10FFFF)`, with `starts_with` on the rows found:
exact under the C collation the database uses, and never wrong under another (at worst a
row the range leaves out is missing). Pages are keyset, in index order: the external id
after the cursor's, or (value, id) after the cursor's for e-mail and phone, which repeat.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import func, literal, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from app.pagination import Page
from app.recipients.models import Recipient
from app.recipients.validation import ERASED_PREFIX

SearchField = Literal["external_id", "email", "phone"]
SEARCH_FIELDS: tuple[SearchField, ...] = ("external_id", "email", "phone")
MAX_QUERY = 200  # the external id column's length; e-mail prefixes longer than it are rare
MAX_CURSOR = 600
_TOP = "\U0010ffff"  # sorts after every character: the end of a prefix's range
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_PHONE_NOISE = re.compile(r"[\s().-]")
_PHONE_PREFIX = re.compile(r"^\+[0-9]{1,15}$")


class SearchInvalid(ValueError):
    """The search cannot be run as given; `field` names the input at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Search:
    """A checked search: which field, and the prefix as stored (e-mail lower-cased, phone
    in E.164 form)."""

    field: SearchField
    prefix: str


def guess_field(text: str) -> SearchField:
    """What a person most likely typed: an e-mail has '@', a phone starts with '+' (digits
    alone are more often an id: `10042`); anything else is an external id."""
    if "@" in text:
        return "email"
    if _PHONE_PREFIX.match(_PHONE_NOISE.sub("", text)):
        return "phone"
    return "external_id"


def check_search(text: str, field: str | None = None) -> Search:
    """The search for `text` (stripped) in `field` (None: guessed); SearchInvalid when not."""
    text = text.strip()
    if not text:
        raise SearchInvalid("q", "type the beginning of an id, an e-mail or a phone number")
    if len(text) > MAX_QUERY:
        raise SearchInvalid("q", f"at most {MAX_QUERY} characters")
    if _CONTROL.search(text):
        raise SearchInvalid("q", "control characters are not allowed")
    chosen = guess_field(text) if field is None else field
    if chosen not in SEARCH_FIELDS:
        raise SearchInvalid("by", f"one of {', '.join(SEARCH_FIELDS)}")
    if chosen == "email":
        return Search("email", text.lower())
    if chosen == "phone":
        compact = _PHONE_NOISE.sub("", text)
        if not compact.startswith("+"):
            compact = "+" + compact
        if not _PHONE_PREFIX.match(compact):
            raise SearchInvalid("q", "a phone number's beginning: '+' and digits, e.g. +4420")
        return Search("phone", compact)
    return Search("external_id", text)


def _column(field: SearchField) -> Any:
    if field == "email":
        return func.lower(Recipient.email)
    if field == "phone":
        return Recipient.phone
    return Recipient.external_id


def _cursor(text: str | None, field: SearchField) -> tuple[str, uuid.UUID | None] | None:
    """An external id's cursor is the last id shown; an e-mail's or phone's is
    `<value>|<recipient id>` (the value may hold '|', the id does not)."""
    if not text:
        return None
    if len(text) > MAX_CURSOR:
        raise SearchInvalid("after", "not a cursor of this search")
    if field == "external_id":
        return text, None
    value, _, recipient_id = text.rpartition("|")
    try:
        return value, uuid.UUID(recipient_id)
    except ValueError:
        raise SearchInvalid("after", "not a cursor of this search") from None


async def search_recipients(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    mode: str,
    search: Search,
    limit: int,
    after: str | None = None,
) -> Page[Recipient]:
    """Recipients whose field begins with the search's prefix, in the field's order."""
    column = _column(search.field)
    prefix = search.prefix
    query = select(Recipient).where(
        Recipient.tenant_id == tenant_id,
        Recipient.mode == mode,
        column >= prefix,
        column < literal(prefix + _TOP),
        func.starts_with(column, prefix),
    )
    if search.field == "email":
        query = query.where(Recipient.email.is_not(None))
    elif search.field == "phone":
        query = query.where(Recipient.phone.is_not(None))
    else:
        query = query.where(~func.starts_with(Recipient.external_id, ERASED_PREFIX))
    cursor = _cursor(after, search.field)
    if search.field == "external_id":
        # Unique per tenant and mode: the id alone orders, and the unique key serves it.
        order: tuple[Any, ...] = (column,)
        if cursor is not None:
            query = query.where(column > cursor[0])
    else:
        # E-mail and phone may repeat: the recipient's id breaks ties, the last column of
        # both indexes (migration 0029), so the index serves the order and the cursor.
        order = (column, Recipient.id)
        if cursor is not None:
            query = query.where(tuple_(column, Recipient.id) > tuple_(*cursor))
    rows = list((await session.scalars(query.order_by(*order).limit(limit + 1))).all())
    has_more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = None
    if has_more and rows:
        last = rows[-1]
        if search.field == "external_id":
            next_cursor = last.external_id
        else:
            value = (last.email or "").lower() if search.field == "email" else last.phone or ""
            next_cursor = f"{value}|{last.id}"
    return Page(items=rows, has_more=has_more, next_cursor=next_cursor)
