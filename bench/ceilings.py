"""The machine's ceilings, measured in the same run as the benches that are divided by them.

- `pg_insert`: single-row INSERTs of a message row, each its own transaction, from 8
  connections at once: what a commit costs on this disk, with some concurrency.
- `pg_copy`: COPY of message rows (the columns dispatch writes) into a table shaped like
  `messages`, with its indexes: bulk write bandwidth.
- `pg_claim`: the claim of app/delivery/claims.py on that table, 500 rows per UPDATE, each
  its own transaction, from one connection: the fastest Herald could move messages to
  `sending`, without a render, a provider or an outcome.
- `redis_ops`: Redis commands per second in pipelines of 1,000, from one connection.
- `healthz`: `GET /healthz` requests/s driven by wrk through `herald api` started as the
  benches start it (the same number of server processes): the HTTP stack with no work.

The PostgreSQL figures use scratch tables (`bench_*`, created `LIKE messages INCLUDING
ALL`: same columns, defaults and indexes, no foreign keys) in the bench's own database,
dropped afterwards; the Redis figure uses keys under `herald:bench:` deleted afterwards.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import asyncpg
import redis.asyncio as aioredis

from app.settings import Settings
from bench.common import free_port, herald, plain_url, running, service_env, wait_ready, wrk
from bench.report import Progress, Section

INSERT_CONNECTIONS = 8
CLAIM_BATCH = 500
COPY_ROWS = 200_000
CLAIM_ROWS = 100_000
REDIS_PIPELINE = 1_000

Tick = Callable[[float, float], None]  # progress: done, total


_COLUMNS = (
    "id",
    "notification_id",
    "tenant_id",
    "mode",
    "recipient_id",
    "channel",
    "address",
    "render_id",
    "status",
    "created_at",
)


def _rows(n: int) -> list[tuple[object, ...]]:
    tenant, notification, render = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    now = datetime.now(UTC)
    return [
        (
            uuid.uuid4(),
            notification,
            tenant,
            "test",
            uuid.uuid4(),
            "email",
            f"user-{i}@example.com",
            render,
            "queued",
            now,
        )
        for i in range(n)
    ]


async def _scratch(connection: asyncpg.Connection, name: str) -> None:
    await connection.execute(f"DROP TABLE IF EXISTS {name}")
    await connection.execute(f"CREATE TABLE {name} (LIKE messages INCLUDING ALL)")


async def pg_insert(database_url: str, seconds: float, tick: Tick) -> float:
    """Rows/s of single-row INSERTs (autocommit) from INSERT_CONNECTIONS connections."""
    url = plain_url(database_url)
    setup = await asyncpg.connect(url)
    await _scratch(setup, "bench_insert")
    statement = (
        "INSERT INTO bench_insert (id, notification_id, tenant_id, mode, recipient_id, channel,"
        " address, render_id, status, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9,"
        " $10)"
    )
    counts = [0] * INSERT_CONNECTIONS
    began = time.monotonic()
    deadline = began + seconds

    async def one(index: int) -> None:
        connection = await asyncpg.connect(url)
        try:
            prepared = await connection.prepare(statement)
            while time.monotonic() < deadline:
                await prepared.fetch(*_rows(1)[0])
                counts[index] += 1
                if index == 0 and counts[0] % 50 == 0:
                    tick(time.monotonic() - began, seconds)
        finally:
            await connection.close()

    try:
        start = time.monotonic()
        await asyncio.gather(*(one(i) for i in range(INSERT_CONNECTIONS)))
        elapsed = time.monotonic() - start
    finally:
        await setup.execute("DROP TABLE IF EXISTS bench_insert")
        await setup.close()
    return sum(counts) / elapsed


async def pg_copy(database_url: str, tick: Tick) -> float:
    """Rows/s of COPY into a messages-shaped table, in chunks of 20,000."""
    connection = await asyncpg.connect(plain_url(database_url))
    try:
        await _scratch(connection, "bench_copy")
        chunk = 20_000
        prepared = [_rows(chunk) for _ in range(COPY_ROWS // chunk)]
        start = time.monotonic()
        for n, rows in enumerate(prepared):
            await connection.copy_records_to_table("bench_copy", records=rows, columns=_COLUMNS)
            tick((n + 1) * chunk, COPY_ROWS)
        elapsed = time.monotonic() - start
        return COPY_ROWS / elapsed
    finally:
        await connection.execute("DROP TABLE IF EXISTS bench_copy")
        await connection.close()


# The claim of app/delivery/claims.py, on the scratch table (no join: the renders,
# notifications and tenants it reads are a few rows, cached).
_CLAIM = """
UPDATE bench_claim AS m
   SET status = 'sending', claimed_until = now() + interval '120 seconds',
       attempts = m.attempts + 1, updated_at = now()
 WHERE m.id = ANY($1::uuid[])
   AND m.status IN ('queued', 'retrying')
   AND (m.next_attempt_at IS NULL OR m.next_attempt_at <= now())
RETURNING m.id, m.tenant_id, m.notification_id, m.recipient_id, m.channel, m.address,
          m.attempts, m.rate_limited_attempts, m.claimed_until
"""


async def pg_claim(database_url: str, tick: Tick) -> float:
    """Rows/s moved to `sending` by the claim UPDATE, CLAIM_BATCH ids per transaction."""
    connection = await asyncpg.connect(plain_url(database_url))
    try:
        await _scratch(connection, "bench_claim")
        rows = _rows(CLAIM_ROWS)
        await connection.copy_records_to_table("bench_claim", records=rows, columns=_COLUMNS)
        await connection.execute("VACUUM ANALYZE bench_claim")
        ids = [row[0] for row in rows]
        prepared = await connection.prepare(_CLAIM)
        claimed = 0
        start = time.monotonic()
        for first in range(0, len(ids), CLAIM_BATCH):
            async with connection.transaction():
                claimed += len(await prepared.fetch(ids[first : first + CLAIM_BATCH]))
            tick(first + CLAIM_BATCH, len(ids))
        elapsed = time.monotonic() - start
        return claimed / elapsed
    finally:
        await connection.execute("DROP TABLE IF EXISTS bench_claim")
        await connection.close()


async def redis_ops(redis_url: str, seconds: float, tick: Tick) -> float:
    """Commands/s (HSET then HGET of small hashes) in pipelines of REDIS_PIPELINE."""
    client = aioredis.Redis.from_url(redis_url)
    prefix = f"herald:bench:{uuid.uuid4().hex}:"
    done = 0
    try:
        start = time.monotonic()
        deadline = start + seconds
        while time.monotonic() < deadline:
            pipe = client.pipeline(transaction=False)
            for i in range(REDIS_PIPELINE // 2):
                key = f"{prefix}{i}"
                pipe.hset(key, mapping={"t": "1.5", "ts": "1"})
                pipe.hget(key, "t")
            await pipe.execute()
            done += REDIS_PIPELINE
            tick(time.monotonic() - start, seconds)
        elapsed = time.monotonic() - start
        keys = [f"{prefix}{i}" for i in range(REDIS_PIPELINE // 2)]
        await client.delete(*keys)
        return done / elapsed
    finally:
        await client.aclose()


HEALTHZ_SECONDS = 8
HEALTHZ_CONNECTIONS = 64


def healthz(settings: Settings, api_processes: int) -> dict[str, float]:
    """wrk on `GET /healthz` of `herald api --workers api_processes`."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = herald("api", "--port", str(port), "--workers", str(api_processes))
    with running([command], service_env(settings)):
        wait_ready(url)
        return wrk(f"{url}/healthz", seconds=HEALTHZ_SECONDS, connections=HEALTHZ_CONNECTIONS)


def measure(settings: Settings, progress: Progress, *, api_processes: int) -> Section:
    """Every ceiling, as the `ceilings` section of a report."""
    assert settings.database_url is not None and settings.redis_url is not None
    section = Section("ceilings")
    measure_database(settings.database_url, settings.redis_url, section, progress)
    progress.stage(f"ceiling: /healthz through {api_processes} API process(es), wrk")
    found = healthz(settings, api_processes)
    section.add("healthz", found["requests_per_second"], "requests/s")
    section.notes.append(
        f"healthz: {api_processes} API process(es), wrk {HEALTHZ_CONNECTIONS} connections, "
        f"{HEALTHZ_SECONDS} s, p50 {found['p50_ms']:.1f} ms, p99 {found['p99_ms']:.1f} ms"
    )
    section.notes.append(
        f"pg_insert: {INSERT_CONNECTIONS} connections; pg_claim: {CLAIM_BATCH} rows per "
        f"UPDATE; redis_ops: pipelines of {REDIS_PIPELINE}"
    )
    return section


def measure_database(
    database_url: str, redis_url: str, section: Section, progress: Progress
) -> None:
    """Adds pg_insert, pg_copy, pg_claim and redis_ops to `section`."""
    progress.stage("ceiling: PostgreSQL single-row INSERT, 8 connections")
    insert = asyncio.run(pg_insert(database_url, 5.0, progress.update))
    section.add("pg_insert", insert, "rows/s")
    progress.stage("ceiling: PostgreSQL COPY")
    section.add("pg_copy", asyncio.run(pg_copy(database_url, progress.update)), "rows/s")
    progress.stage("ceiling: PostgreSQL 500-row claim UPDATE")
    section.add("pg_claim", asyncio.run(pg_claim(database_url, progress.update)), "rows/s")
    progress.stage("ceiling: Redis pipelined commands")
    section.add("redis_ops", asyncio.run(redis_ops(redis_url, 3.0, progress.update)), "ops/s")
