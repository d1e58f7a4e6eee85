"""Request-scoped dependencies shared by the API and the dashboard."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TypeAlias

from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from sqlalchemy.ext.asyncio import AsyncSession

from app.delivery.outbox import Outbox
from app.notifications.writer import IntakeWriter

DbSession: TypeAlias = NamedDependency[AsyncSession]
# The queues, as the domain sees them; the API's lifespan (app/main.py) puts the arq
# implementation in the state.
OutboxDependency: TypeAlias = NamedDependency[Outbox]
IntakeDependency: TypeAlias = NamedDependency[IntakeWriter]


async def provide_db_session(state: State) -> AsyncIterator[AsyncSession]:
    """One session per request; handlers commit explicitly before answering."""
    async with state.sessions() as session:
        yield session


def provide_outbox(state: State) -> Outbox:
    outbox: Outbox = state.outbox
    return outbox


def provide_intake(state: State) -> IntakeWriter:
    writer: IntakeWriter = state.intake_writer
    return writer


# By name, as route handlers ask for them (`db_session: DbSession`, `outbox: OutboxDependency`).
DEPENDENCIES = {
    "db_session": Provide(provide_db_session),
    "outbox": Provide(provide_outbox, sync_to_thread=False),
    "intake_writer": Provide(provide_intake, sync_to_thread=False),
}
