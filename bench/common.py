"""What the benchmarks share: their own database, a server process, wrk, a tenant."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import click
import httpx
import redis.asyncio as aioredis
from sqlalchemy import text

from app.db import create_engine
from app.delivery.outbox import Job
from app.settings import Settings
from jobs.queues import QUEUE_NAMES, withdraw


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


DATABASE_PREFIX = "herald_bench_"


def plain_url(database_url: str) -> str:
    """asyncpg's own spelling of a PostgreSQL URL."""
    for prefix in ("postgresql+asyncpg://", "postgres://"):
        if database_url.startswith(prefix):
            return "postgresql://" + database_url[len(prefix) :]
    return database_url


@contextlib.contextmanager
def dedicated_database(settings: Settings) -> Iterator[Settings]:
    """A fresh database for one bench run on the configured server, migrated, then dropped.

    A run never writes to the configured database itself (nor to `postgres`): its rows,
    dead tuples and autovacuum debt would otherwise fall into whatever runs next there.
    """
    from app.migrate import upgrade

    assert settings.database_url is not None
    server = plain_url(settings.database_url)
    name = f"{DATABASE_PREFIX}{time.strftime('%Y%m%d_%H%M%S')}_{uuid.uuid4().hex[:6]}"
    asyncio.run(_admin(server, f'CREATE DATABASE "{name}"'))
    url = urlsplit(settings.database_url)._replace(path=f"/{name}").geturl()
    try:
        upgrade(url)
        yield dataclasses.replace(settings, database_url=url)
    finally:
        asyncio.run(_admin(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _admin(server_url: str, statement: str) -> None:
    connection = await asyncpg.connect(server_url)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def wrk(
    url: str, *, seconds: float, connections: int, script: str | None = None
) -> dict[str, float]:
    """Drive `url` with wrk (Debian package `wrk`): requests, non-2xx, requests/s, p50/p99 ms."""
    if subprocess.run(["which", "wrk"], capture_output=True).returncode:
        raise click.ClickException("herald bench needs wrk: apt-get install wrk")
    with tempfile.TemporaryDirectory() as folder:
        command = ["wrk", "-t2", f"-c{connections}", f"-d{int(seconds)}s", "--latency"]
        if script is not None:
            path = Path(folder) / "script.lua"
            path.write_text(script)
            command += ["-s", str(path)]
        report = subprocess.run([*command, url], check=True, capture_output=True, text=True).stdout
    return read_report(report)


def read_report(report: str) -> dict[str, float]:
    """wrk's report (`--latency`) as figures: requests, non-2xx, requests/s, p50/p99 ms."""
    return {
        "requests": float(_figure(r"(\d+) requests in", report) or 0),
        "not_2xx": float(_figure(r"Non-2xx or 3xx responses: (\d+)", report) or 0),
        "requests_per_second": float(_figure(r"Requests/sec:\s+([\d.]+)", report) or "nan"),
        # The latency distribution's own lines: "Req/Sec … 68.50%" ends in 50% as well.
        "p50_ms": _milliseconds(_figure(r"(?m)^\s*50%\s+(\S+)", report)),
        "p99_ms": _milliseconds(_figure(r"(?m)^\s*99%\s+(\S+)", report)),
    }


def _figure(pattern: str, text: str) -> str | None:
    match = re.search(pattern, text)
    return match.group(1) if match else None


def _milliseconds(value: str | None) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value or "")
    if not match:
        return float("nan")
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[match.group(2)]
    return float(match.group(1)) * scale


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


async def _retire(database_url: str, tenant_ids: tuple[uuid.UUID, ...]) -> None:
    engine = create_engine(database_url, pool=False)
    async with engine.begin() as connection:
        await connection.execute(_RETIRE, {"tenants": list(tenant_ids)})
    autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
    async with autocommit.connect() as connection:
        await connection.execute(text(_VACUUM))
    await engine.dispose()


# A bench tenant leaves nothing behind for the next bench of the same run (`bench all`
# shares one database): the relay would dispatch the notifications ingest left accepted
# (its jobs removed, no worker ran) in the middle of e2e, and the sweeper would pick up
# undelivered messages; the sent rows (dead after each update) would have the next bench
# measure autovacuum catching up. The tenant's notifications go, and with them (ON DELETE
# CASCADE) its messages, attempts and renders, and (by trigger) its message tallies; the
# tenant and its recipients stay.
_RETIRE = text("DELETE FROM notifications WHERE tenant_id = ANY(:tenants)")
_VACUUM = "VACUUM (ANALYZE) notifications, messages, attempts, renders, message_tallies"


def retire_tenants(database_url: str, *tenant_ids: uuid.UUID) -> None:
    """Delete what the bench tenants sent, delivered or not (see _RETIRE)."""
    asyncio.run(_retire(database_url, tenant_ids))


# Every job id names the message or notification it works on second: deliver:<message>:n,
# wait:/retry:/sweep:…:<message>:…, dispatch:<notification>[:ms] (app/delivery/outbox.py).
_NAMED = """
SELECT id FROM messages WHERE id = ANY($1::uuid[])
UNION ALL
SELECT id FROM notifications WHERE id = ANY($1::uuid[])
"""


def named_row(job_id: str) -> uuid.UUID | None:
    """The message or notification a job id names, if it names one."""
    parts = job_id.split(":")
    if len(parts) < 2:
        return None
    try:
        return uuid.UUID(parts[1])
    except ValueError:
        return None


async def withdraw_jobs_of(database_url: str, redis_url: str) -> int:
    """Withdraw the queued jobs naming this database's rows (see withdraw_leftovers)."""
    client = aioredis.Redis.from_url(redis_url)
    connection = await asyncpg.connect(plain_url(database_url))
    try:
        queued: list[tuple[str, str, uuid.UUID]] = []
        for priority, queue in QUEUE_NAMES.items():
            for member in await client.zrange(queue, 0, -1):
                job_id = member.decode()
                row = named_row(job_id)
                if row is not None:
                    queued.append((priority, job_id, row))
        ours = {
            record["id"]
            for record in await connection.fetch(_NAMED, list({row for _, _, row in queued}))
        }
        jobs = [Job(p, "deliver", (), job_id) for p, job_id, row in queued if row in ours]
        for start in range(0, len(jobs), 1_000):
            await withdraw(client, jobs[start : start + 1_000])
        return len(jobs)
    finally:
        await connection.close()
        await client.aclose()


def withdraw_leftovers(database_url: str, redis_url: str) -> int:
    """Take off the queues the jobs, left by a bench that stopped its workers before they
    ran, that name this database's messages or notifications (a broadcast's batches not yet
    delivered): the next bench's workers, or anyone's on the same Redis, would otherwise
    inherit them. The number withdrawn."""
    return asyncio.run(withdraw_jobs_of(database_url, redis_url))
