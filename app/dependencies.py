"""Request-scoped dependencies shared by the API and the dashboard."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TypeAlias

from litestar.datastructures import State
from litestar.di import NamedDependency
from sqlalchemy.ext.asyncio import AsyncSession

DbSession: TypeAlias = NamedDependency[AsyncSession]


async def provide_db_session(state: State) -> AsyncIterator[AsyncSession]:
    """One session per request; handlers commit explicitly before answering."""
    async with state.sessions() as session:
        yield session
