"""Bad API keys cost a read at most: nothing is written for them, their refusal is remembered,
and a flood of random keys holds only a few database connections.

The statements are counted at the app's own engine (SQLAlchemy's cursor events), the
connections at its pool (checkout and checkin events).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx
from litestar import Litestar
from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.keys import MAX_LOOKUPS, generate_secret
from app.auth.models import ApiKey
from tests.support import make_tenant


@dataclass
class Database:
    statements: list[str] = field(default_factory=list)
    checked_out: int = 0
    most_checked_out: int = 0

    @property
    def writes(self) -> list[str]:
        return [s for s in self.statements if s.lstrip().split()[0].upper() != "SELECT"]


@contextmanager
def watching(app: Litestar) -> Iterator[Database]:
    engine = app.state.engine.sync_engine
    seen = Database()

    def statement(conn: object, cursor: object, text: str, *args: object) -> None:
        seen.statements.append(text)

    def checkout(*args: object) -> None:
        seen.checked_out += 1
        seen.most_checked_out = max(seen.most_checked_out, seen.checked_out)

    def checkin(*args: object) -> None:
        seen.checked_out -= 1

    hooks = [(engine, "before_cursor_execute", statement)]
    hooks += [(engine.pool, "checkout", checkout), (engine.pool, "checkin", checkin)]
    for target, name, hook in hooks:
        event.listen(target, name, hook)
    try:
        yield seen
    finally:
        for target, name, hook in hooks:
            event.remove(target, name, hook)


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def test_an_unknown_key_is_refused_with_one_read_then_from_memory(
    app: Litestar, client: httpx.AsyncClient
) -> None:
    unknown = generate_secret("live")
    with watching(app) as database:
        for _ in range(20):
            answer = await client.get("/v1/tenant", headers=bearer(unknown))
            assert answer.status_code == 401
            assert "not recognised" in answer.json()["detail"]
    assert database.writes == []
    assert len(database.statements) == 1, database.statements


async def test_a_revoked_key_writes_nothing_and_is_remembered(
    app: Litestar, client: httpx.AsyncClient, session: AsyncSession
) -> None:
    holder = await make_tenant(session, "Revoked soon")
    assert (await client.delete(f"/v1/api-keys/{holder.key_id}", headers=holder.headers)).is_success
    used_at = await session.scalar(select(ApiKey.last_used_at).where(ApiKey.id == holder.key_id))
    await asyncio.sleep(app.state.key_cache.ttl + 0.05)  # the valid key leaves memory

    with watching(app) as database:
        for _ in range(20):
            answer = await client.get("/v1/tenant", headers=holder.headers)
            assert answer.status_code == 401 and "revoked" in answer.json()["detail"]
    assert database.writes == []
    assert len(database.statements) == 1
    session.expire_all()
    after = await session.scalar(select(ApiKey.last_used_at).where(ApiKey.id == holder.key_id))
    assert after == used_at, "a refused key's last use is not its refusal"


async def test_a_flood_of_random_keys_holds_few_connections_and_the_valid_key_still_works(
    app: Litestar, client: httpx.AsyncClient, session: AsyncSession
) -> None:
    good = await make_tenant(session, "Flooded")
    flood = [generate_secret("live") for _ in range(300)]

    async def bad(secret: str) -> int:
        return (await client.get("/v1/tenant", headers=bearer(secret))).status_code

    with watching(app) as database:
        refused = asyncio.gather(*(bad(secret) for secret in flood))
        valid = await client.get("/v1/tenant", headers=good.headers)
        statuses = await refused
    assert valid.status_code == 200
    assert set(statuses) == {401}
    assert database.most_checked_out <= MAX_LOOKUPS + 1  # the valid key's lookup
    assert database.writes == [s for s in database.writes if "UPDATE api_keys" in s]
    assert len(database.writes) <= 1, "only the valid key's first use is recorded"
    reads = len(database.statements) - len(database.writes)
    assert reads <= len(flood) + 2, "one per random key, and the valid request's two"


async def test_last_use_is_recorded_to_the_minute(
    app: Litestar, client: httpx.AsyncClient, session: AsyncSession
) -> None:
    fresh = await make_tenant(session, "Busy key")
    with watching(app) as database:
        for _ in range(3):
            assert (await client.get("/v1/tenant", headers=fresh.headers)).status_code == 200
            await asyncio.sleep(app.state.key_cache.ttl + 0.05)  # each a lookup
    writes = [s for s in database.writes if "UPDATE api_keys" in s]
    assert len(writes) == 1, "the first use is written; the next ones within a minute are not"
