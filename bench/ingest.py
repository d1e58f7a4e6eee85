"""`herald bench ingest`: single POST /v1/notifications, accepted and committed per second.

Starts API processes against the configured (or embedded) services, fires single-recipient
notifications from concurrent clients for a fixed count, then counts the committed rows.
"""

from __future__ import annotations

import asyncio
import time

import httpx
from sqlalchemy import func, select

from app.db import create_engine, session_factory
from app.notifications.models import Notification
from app.seed import create_tenant_with_key
from app.settings import Settings
from bench.common import (
    free_port,
    herald,
    percentile,
    prepare_tenant,
    running,
    service_env,
    wait_ready,
)


async def _fire(
    base_url: str, secret: str, total: int, concurrency: int
) -> tuple[int, list[float], float]:
    headers = {"Authorization": f"Bearer {secret}"}
    latencies: list[float] = []
    accepted = 0
    counter = iter(range(total))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=base_url, headers=headers, limits=limits, timeout=30
    ) as client:

        async def worker() -> None:
            nonlocal accepted
            for n in counter:
                began = time.perf_counter()
                response = await client.post(
                    "/v1/notifications",
                    json={"template": "bench", "to": [f"user-{n % 100}"], "data": {"order": n}},
                )
                latencies.append(time.perf_counter() - began)
                accepted += response.status_code == 202

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    return accepted, latencies, elapsed


async def _committed(database_url: str, tenant_id: object) -> int:
    engine = create_engine(database_url, pool=False)
    async with session_factory(engine)() as session:
        count = await session.scalar(
            select(func.count())
            .select_from(Notification)
            .where(Notification.tenant_id == tenant_id)
        )
    await engine.dispose()
    return int(count or 0)


def run(settings: Settings, *, total: int, concurrency: int, api_processes: int) -> None:
    assert settings.database_url is not None
    tenant_id, secret = asyncio.run(
        create_tenant_with_key(settings.database_url, "bench ingest", "test")
    )
    ports = [free_port() for _ in range(api_processes)]
    env = service_env(settings, HERALD_API_KEY_CACHE_SECONDS="1")
    with running([herald("api", "--port", str(port)) for port in ports], env):
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        for url in urls:
            wait_ready(url)
        prepare_tenant(urls[0], secret, recipients=100)

        async def all_servers() -> list[tuple[int, list[float], float]]:
            share = total // len(urls)
            return await asyncio.gather(
                *(_fire(url, secret, share, max(1, concurrency // len(urls))) for url in urls)
            )

        results = asyncio.run(all_servers())
    accepted = sum(r[0] for r in results)
    latencies = [lat for r in results for lat in r[1]]
    elapsed = max(r[2] for r in results)
    committed = asyncio.run(_committed(settings.database_url, tenant_id))
    print(f"ingest: {api_processes} API process(es), {concurrency} clients, {total} requests")
    print(f"  accepted (202)   {accepted}")
    print(f"  committed rows   {committed}")
    print(f"  throughput       {accepted / elapsed:,.0f} notifications/s")
    print(
        f"  latency          p50 {percentile(latencies, 0.5) * 1000:.1f} ms · "
        f"p99 {percentile(latencies, 0.99) * 1000:.1f} ms"
    )
