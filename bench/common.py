"""What the benchmarks share: services, a server process, a tenant with a template."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
from sqlalchemy import text

from app.db import create_engine
from app.settings import Settings


@dataclass(frozen=True)
class Server:
    base_url: str
    processes: list[subprocess.Popen[bytes]]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def service_env(settings: Settings, **extra: str) -> dict[str, str]:
    assert settings.database_url and settings.redis_url
    return {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "HERALD_LOG_LEVEL": "warning",
        **extra,
    }


@contextlib.contextmanager
def running(
    commands: list[list[str]], env: dict[str, str]
) -> Iterator[list[subprocess.Popen[bytes]]]:
    processes = [subprocess.Popen(command, env=env) for command in commands]
    try:
        yield processes
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def herald(*args: str) -> list[str]:
    return [sys.executable, "-m", "app.cli", *args]


def wait_ready(base_url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base_url}/readyz", timeout=1).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{base_url} did not become ready")


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def prepare_tenant(base_url: str, secret: str, recipients: int) -> None:
    """A template with e-mail and inbox content, and `recipients` recipients (batch API)."""
    headers = {"Authorization": f"Bearer {secret}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=60) as client:
        template = {
            "name": "Bench",
            "content": {
                "email": {
                    "subject": "Order {{ order }}",
                    "text": "Hello, order {{ order }} shipped.",
                },
                "inbox": {"title": "Order {{ order }}", "body": "It shipped."},
            },
        }
        client.put("/v1/templates/bench", json=template).raise_for_status()
        for start in range(0, recipients, 1000):
            batch = [
                {"external_id": f"user-{n}", "email": f"user-{n}@example.com"}
                for n in range(start, min(recipients, start + 1000))
            ]
            client.post("/v1/recipients/batch", json={"recipients": batch}).raise_for_status()


async def _retire(database_url: str, tenant_id: uuid.UUID) -> None:
    engine = create_engine(database_url, pool=False)
    async with engine.begin() as connection:
        await connection.execute(_RETIRE, {"tenant": tenant_id})
    autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
    async with autocommit.connect() as connection:
        await connection.execute(text(_VACUUM))
    await engine.dispose()


# A bench tenant leaves nothing behind: the relay and the sweeper would pick up its
# undelivered rows in whatever runs next on the same database, and its sent rows (dead
# after each update) would have the next run measure autovacuum catching up with this one.
# Its notifications go, and with them (ON DELETE CASCADE) its messages, attempts and renders;
# the tenant, its recipients and its audit trail stay.
_RETIRE = text("DELETE FROM notifications WHERE tenant_id = :tenant")
_VACUUM = "VACUUM (ANALYZE) notifications, messages, attempts, renders"


def retire_tenant(database_url: str, tenant_id: uuid.UUID) -> None:
    """Delete what the bench tenant sent, delivered or not (see _RETIRE)."""
    asyncio.run(_retire(database_url, tenant_id))
