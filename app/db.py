"""Database engine, sessions and the declarative base shared by every domain's models."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import Boolean, MetaData, func, literal_column
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.pool import NullPool
from sqlalchemy.types import DateTime

from app.ids import uuid7

# The largest value of PostgreSQL's `integer`: an API number stored in or compared with such
# a column is bounded by it, or asyncpg refuses to encode the query (a 500, not a 422).
MAX_INT4 = 2_147_483_647

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: DateTime(timezone=True)}


class UuidPrimaryKey:
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid7)


def utcnow() -> datetime:
    return datetime.now(UTC)


class CreatedAt:
    created_at: Mapped[datetime] = mapped_column(default=utcnow, server_default=func.now())


class UpdatedAt:
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())


# RETURNed by INSERT ... ON CONFLICT DO UPDATE: true for a row inserted, false for one updated
# (the updated row version's xmax holds the id of the transaction updating it).
WAS_INSERTED = literal_column("xmax = 0", Boolean).label("inserted")


def asyncpg_url(url: str) -> str:
    """Accept postgres://, postgresql:// and postgresql+asyncpg:// alike."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    raise ValueError(f"not a PostgreSQL URL: {url}")


def create_engine(
    url: str, *, pool: bool = True, pool_size: int = 10, pre_ping: bool = True
) -> AsyncEngine:
    """pre_ping checks each connection at checkout (three round trips); a caller that
    invalidates connections itself on connection errors can do without."""
    if not pool:
        return create_async_engine(asyncpg_url(url), poolclass=NullPool)
    return create_async_engine(
        asyncpg_url(url), pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=pre_ping
    )


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)
