"""`herald bench e2e`: N recipients through dispatch and delivery on the sandbox provider.

Starts one API process and worker processes, sends notifications of up to 1,000
recipients each with a test key (sandbox provider), waits until every message is sent,
and prints messages/s and the accept→sent latency percentiles read from PostgreSQL.

A warm-up tenant's notifications go through first, and the figures count only what is
sent after it: the workers' start (the interpreter, its render processes, the first
connections) is not what the bench measures.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
from sqlalchemy import func, select

from app.db import create_engine, session_factory
from app.notifications.models import Message, Notification
from app.seed import create_tenant_with_key
from app.settings import Settings
from bench.common import (
    free_port,
    herald,
    percentile,
    prepare_tenant,
    retire_tenant,
    running,
    service_env,
    wait_ready,
)

BATCH = 1_000
WARM_UP = 2_000  # recipients sent through before the measured run


async def _send(base_url: str, secret: str, recipients: int) -> float:
    headers = {"Authorization": f"Bearer {secret}"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=60) as client:
        began = time.perf_counter()
        for start in range(0, recipients, BATCH):
            to = [f"user-{n}" for n in range(start, min(recipients, start + BATCH))]
            body = {"template": "bench", "to": to, "channels": ["email"], "data": {"order": start}}
            (await client.post("/v1/notifications", json=body)).raise_for_status()
        return time.perf_counter() - began


async def _progress(
    database_url: str, tenant_id: uuid.UUID, expected: int, wait_seconds: float
) -> list[float]:
    engine = create_engine(database_url, pool=False)
    sessions = session_factory(engine)
    deadline = time.monotonic() + wait_seconds
    try:
        while time.monotonic() < deadline:
            async with sessions() as session:
                done = await session.scalar(
                    select(func.count())
                    .select_from(Message)
                    .where(Message.tenant_id == tenant_id, Message.status.in_(("sent", "failed")))
                )
            if (done or 0) >= expected:
                break
            await asyncio.sleep(0.5)
        async with sessions() as session:
            rows = await session.execute(
                select(Message.sent_at, Notification.created_at)
                .join(Notification, Notification.id == Message.notification_id)
                .where(Message.tenant_id == tenant_id, Message.status == "sent")
            )
            return [(sent - created).total_seconds() for sent, created in rows.all() if sent]
    finally:
        await engine.dispose()


async def _span(database_url: str, tenant_id: uuid.UUID) -> float:
    engine = create_engine(database_url, pool=False)
    async with session_factory(engine)() as session:
        first = await session.scalar(
            select(func.min(Notification.created_at)).where(Notification.tenant_id == tenant_id)
        )
        last = await session.scalar(
            select(func.max(Message.sent_at)).where(Message.tenant_id == tenant_id)
        )
    await engine.dispose()
    return (last - first).total_seconds() if first and last else float("nan")


def run(settings: Settings, *, recipients: int, workers: int, timeout: float) -> None:
    assert settings.database_url is not None
    tenant_id, secret = asyncio.run(
        create_tenant_with_key(settings.database_url, "bench e2e", "test", plan="enterprise")
    )
    warm_id, warm_secret = asyncio.run(
        create_tenant_with_key(settings.database_url, "bench warm-up", "test", plan="enterprise")
    )
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = service_env(settings)
    with running([herald("api", "--port", str(port))], env):
        wait_ready(base_url)
        prepare_tenant(base_url, secret, recipients)
        prepare_tenant(base_url, warm_secret, WARM_UP)
        commands = [herald("worker", "--queues", "normal") for _ in range(workers)]
        with running(commands, env):
            asyncio.run(_send(base_url, warm_secret, WARM_UP))
            asyncio.run(_progress(settings.database_url, warm_id, WARM_UP, timeout))
            intake = asyncio.run(_send(base_url, secret, recipients))
            latencies = asyncio.run(
                _progress(settings.database_url, tenant_id, recipients, timeout)
            )
    span = asyncio.run(_span(settings.database_url, tenant_id))
    retire_tenant(settings.database_url, tenant_id)
    retire_tenant(settings.database_url, warm_id)
    print(f"e2e: {recipients} recipients, {workers} worker process(es), sandbox e-mail provider")
    print(f"  accepted in      {intake:.2f} s ({-(-recipients // BATCH)} notifications)")
    print(f"  sent             {len(latencies)} of {recipients}")
    print(f"  throughput       {len(latencies) / span:,.0f} messages/s (first accept → last sent)")
    print(
        f"  accept→sent      p50 {percentile(latencies, 0.5) * 1000:.0f} ms · "
        f"p99 {percentile(latencies, 0.99) * 1000:.0f} ms"
    )
