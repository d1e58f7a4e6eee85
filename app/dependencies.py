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
# The queues, as the domain sees them; the API's lifespan (app/main.py) gives `Services`
# the arq implementation.
OutboxDependency: TypeAlias = NamedDependency[Outbox]
IntakeDependency: TypeAlias = NamedDependency[IntakeWriter]


async def provide_db_session(state: State) -> AsyncIterator[AsyncSession]:
    """One session per request; handlers commit explicitly before answering."""
    async with state.sessions() as session:
        yield session


class Services:
    """What the API's lifespan starts and route handlers are given by name (`outbox`,
    `intake_writer`): filled in once at start-up (app/main.py).

    Their providers take no argument: one that takes `state` has it checked through a
    signature model on every request, a cost the hot POST /v1/notifications can do without.
    """

    def __init__(self) -> None:
        self.outbox: Outbox | None = None
        self.intake_writer: IntakeWriter | None = None

    def provide_outbox(self) -> Outbox:
        if self.outbox is None:
            raise RuntimeError("the outbox is set by the API's lifespan, which has not run")
        return self.outbox

    def provide_intake_writer(self) -> IntakeWriter:
        if self.intake_writer is None:
            raise RuntimeError("the intake writer is set by the API's lifespan, which has not run")
        return self.intake_writer

    def dependencies(self) -> dict[str, Provide]:
        """By name, as route handlers ask for them (`db_session: DbSession`, `outbox:
        OutboxDependency`, `intake_writer: IntakeDependency`)."""
        return {
            "db_session": Provide(provide_db_session),
            "outbox": Provide(self.provide_outbox, sync_to_thread=False),
            "intake_writer": Provide(self.provide_intake_writer, sync_to_thread=False),
        }
