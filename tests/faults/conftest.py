"""Fixtures of the fault tests: each test's own database, Redis and app (see harness.py)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from app.db import create_engine, session_factory
from app.main import create_app
from app.migrate import upgrade
from app.runtime import ServiceUrls
from tests.conftest import create_database, drop_database, with_database
from tests.faults.harness import PrivateRedis, Stack
from tests.support import serving, settings_for


@pytest.fixture(autouse=True)
def timed(request: pytest.FixtureRequest) -> Iterator[None]:
    """Print how long each fault test took, its stack's set-up and teardown included."""
    started = time.monotonic()
    yield
    print(f"{request.node.name}: {time.monotonic() - started:.1f} s")


@pytest.fixture
def stack_env() -> dict[str, str]:
    """Extra settings for the stack and its workers; a test module overrides this fixture."""
    return {}


@pytest.fixture
async def stack(
    server_urls: ServiceUrls, tmp_path: Path, stack_env: dict[str, str]
) -> AsyncIterator[Stack]:
    name = f"herald_fault_{uuid.uuid4().hex[:8]}"
    async with contextlib.AsyncExitStack() as cleanup:
        worker_role = f"{name}_worker"
        await _on_server(server_urls, *_create_role(worker_role))
        cleanup.push_async_callback(_on_server, server_urls, f'DROP ROLE "{worker_role}"')
        database_url = await create_database(server_urls.database_url, name)
        cleanup.push_async_callback(drop_database, server_urls.database_url, name)
        await asyncio.to_thread(upgrade, database_url)
        redis = PrivateRedis(tmp_path / "redis")
        redis.start()
        cleanup.callback(redis.stop)
        settings = settings_for(
            database_url, redis.url, HERALD_ALLOW_PRIVATE_URLS="true", **stack_env
        )
        application = await cleanup.enter_async_context(serving(create_app(settings)))
        engine = create_engine(database_url)
        cleanup.push_async_callback(engine.dispose)
        transport = httpx.ASGITransport(app=application)
        api = await cleanup.enter_async_context(
            httpx.AsyncClient(transport=transport, base_url="http://herald.test")
        )
        yield Stack(
            settings=settings,
            database_url=database_url,
            worker_role=worker_role,
            redis=redis,
            app=application,
            api=api,
            engine=engine,
            sessions=session_factory(engine),
            folder=tmp_path,
            env=stack_env,
        )


def _create_role(role: str) -> tuple[str, ...]:
    """A login role for the worker processes, holding the app's privileges by membership."""
    return (
        f'DROP ROLE IF EXISTS "{role}"',
        f'CREATE ROLE "{role}" LOGIN',
        f"DO $$ BEGIN EXECUTE format('GRANT %I TO %I', current_user, '{role}'); END $$",
    )


async def _on_server(urls: ServiceUrls, *statements: str) -> None:
    """Statements on the server's `postgres` database (roles are the cluster's, not a
    database's; a role is dropped after the database its connections were in)."""
    engine = create_engine(with_database(urls.database_url, "postgres"), pool=False)
    try:
        async with engine.begin() as connection:
            for statement in statements:
                await connection.execute(text(statement))
    finally:
        await engine.dispose()
