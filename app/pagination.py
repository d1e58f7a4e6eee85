"""Cursor pagination over time-ordered ids, newest first (Stripe's list shape)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

T = TypeVar("T")

MAX_LIMIT = 100


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    has_more: bool
    next_cursor: str | None


async def keyset_page(
    session: AsyncSession,
    query: Select[Any],
    id_column: InstrumentedAttribute[uuid.UUID],
    *,
    limit: int,
    cursor: uuid.UUID | None,
) -> Page[Any]:
    """One page of `query` ordered by id descending, starting after `cursor`."""
    if cursor is not None:
        query = query.where(id_column < cursor)
    rows = list((await session.scalars(query.order_by(id_column.desc()).limit(limit + 1))).all())
    has_more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = str(getattr(rows[-1], id_column.key)) if has_more and rows else None
    return Page(items=rows, has_more=has_more, next_cursor=next_cursor)
