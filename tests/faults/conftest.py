"""Fixtures of the fault tests: each test's own database, Redis and app (see harness.py)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from app.db import create_engine, session_factory
from app.main import create_app
from app.migrate import upgrade
from app.runtime import ServiceUrls
from tests.conftest import create_database, drop_database
from tests.faults.harness import PrivateRedis, Stack
from tests.support import settings_for


@pytest.fixture
def stack_env() -> dict[str, str]:
    """Extra settings for the stack; a test module overrides this fixture to add some."""
    return {}


@pytest.fixture
async def stack(
    server_urls: ServiceUrls, tmp_path: Path, stack_env: dict[str, str]
) -> AsyncIterator[Stack]:
    name = f"herald_fault_{uuid.uuid4().hex[:8]}"
    database_url = await create_database(server_urls.database_url, name)
    await asyncio.to_thread(upgrade, database_url)
    redis = PrivateRedis(tmp_path / "redis")
    redis.start()
    settings = settings_for(database_url, redis.url, HERALD_ALLOW_PRIVATE_URLS="true", **stack_env)
    application = create_app(settings)
    started, stopping = asyncio.Event(), asyncio.Event()

    async def serve() -> None:  # the lifespan is entered and exited in one task
        async with application.lifespan():
            started.set()
            await stopping.wait()

    task = asyncio.create_task(serve())
    await started.wait()
    engine = create_engine(database_url)
    transport = httpx.ASGITransport(app=application)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://herald.test") as api:
            yield Stack(
                settings=settings,
                database_url=database_url,
                redis=redis,
                app=application,
                api=api,
                engine=engine,
                sessions=session_factory(engine),
            )
    finally:
        stopping.set()
        await task
        await engine.dispose()
        redis.stop()
        await drop_database(server_urls.database_url, name)
