"""Cursor pagination over time-ordered ids, newest first (Stripe's list shape)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, text
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


@asynccontextmanager
async def in_index_order(session: AsyncSession) -> AsyncIterator[None]:
    """Run the statements inside on an index that yields their ORDER BY, whatever the
    statistics say.

    Without statistics (autovacuum off, or a table that grew a minute ago) the planner takes
    a tenant's rows for a handful and prefers a bitmap scan of all of them and a sort, which
    reads a million rows before the LIMIT applies. Inside this block neither is open, so a
    keyset page reads about its LIMIT's worth of an index whose equality columns and id
    match the query (each caller says which in its docstring). Only for the block's
    statements: the settings are put back after it, within the transaction.
    """
    await session.execute(text("SET LOCAL enable_bitmapscan = off"))
    await session.execute(text("SET LOCAL enable_sort = off"))
    try:
        yield
    finally:
        await session.execute(text("SET LOCAL enable_sort = on"))
        await session.execute(text("SET LOCAL enable_bitmapscan = on"))
