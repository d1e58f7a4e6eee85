"""Helpers for tests that run the whole send path with real arq workers in-process."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from app.settings import Settings
from jobs import queues
from jobs.worker import build_worker, worker_context
from tests.support import TenantKey


@asynccontextmanager
async def workers(settings: Settings) -> AsyncIterator[dict[str, Any]]:
    """The context a worker process builds: sessions, HTTP client, deliverer."""
    assert settings.database_url is not None
    async with worker_context(settings, settings.database_url) as ctx:
        yield ctx


async def drain(ctx: dict[str, Any], redis_url: str, wait_seconds: float = 60) -> int:
    """Run a worker per queue until no job is due or running; returns the jobs run.

    Jobs deferred to later (retries, send_at) stay queued: arq's burst mode would wait for
    them, so the workers run normally and are stopped once the queues are idle.
    """
    pool = await queues.connect(redis_url)
    running = [build_worker(queue, redis_url=redis_url, ctx=ctx) for queue in queues.QUEUE_NAMES]
    tasks = []
    for worker in running:
        worker.main_task = asyncio.create_task(worker.main())  # handle_sig cancels it
        tasks.append(worker.main_task)
    deadline = time.monotonic() + wait_seconds
    try:
        idle = 0
        while idle < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            now_ms = int(time.time() * 1000)
            due = sum([await pool.zcount(name, 0, now_ms) for name in queues.QUEUE_NAMES.values()])
            busy = any(not t.done() for worker in running for t in worker.tasks.values())
            idle = idle + 1 if due == 0 and not busy else 0
        assert idle >= 3, "the queues did not drain in time"
    finally:
        for worker in running:
            worker.handle_sig(signal.SIGUSR1)
        await asyncio.gather(*tasks, return_exceptions=True)
        for worker in running:
            await worker.close()
        await pool.aclose()
    return sum(w.jobs_complete + w.jobs_failed + w.jobs_retried for w in running)


async def put_template(
    client: httpx.AsyncClient, tenant: TenantKey, key: str, content: dict[str, Any], **extra: Any
) -> None:
    body = {"name": key, "content": content, **extra}
    response = await client.put(f"/v1/templates/{key}", headers=tenant.headers, json=body)
    assert response.status_code in (200, 201), response.text


async def put_recipient(
    client: httpx.AsyncClient, tenant: TenantKey, external_id: str, **fields: Any
) -> None:
    response = await client.put(
        f"/v1/recipients/{external_id}", headers=tenant.headers, json=fields
    )
    assert response.status_code in (200, 201), response.text


async def notify(client: httpx.AsyncClient, tenant: TenantKey, **body: Any) -> dict[str, Any]:
    response = await client.post("/v1/notifications", headers=tenant.headers, json=body)
    assert response.status_code == 202, response.text
    result: dict[str, Any] = response.json()
    return result


async def notification(
    client: httpx.AsyncClient, tenant: TenantKey, notification_id: str
) -> dict[str, Any]:
    response = await client.get(f"/v1/notifications/{notification_id}", headers=tenant.headers)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result
