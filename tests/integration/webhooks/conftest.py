"""What the webhook tests share: a local receiver standing in for a tenant's endpoint, and
the HTTP client Herald's senders use."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.providers.http import new_client
from tests.fakes import FakeProvider


@pytest.fixture
def receiver() -> Iterator[FakeProvider]:
    fake = FakeProvider().start()
    yield fake
    fake.stop()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with new_client() as client:
        yield client


@pytest.fixture(autouse=True)
async def nothing_left_by_other_tests(engine: AsyncEngine) -> None:
    """The database is shared by the whole run, and senders and fan-out take every tenant's
    work: what earlier tests left due (a contract test's `POST …/test`, say) would be taken
    by these tests' rounds and counted with theirs. It is put out of reach first."""
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "UPDATE webhook_deliveries SET next_attempt_at = 'infinity'"
                " WHERE status = 'pending'"
            )
        )
        await connection.execute(text("DELETE FROM webhook_events"))
