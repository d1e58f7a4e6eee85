"""Worker processes: one arq Worker per priority queue, sharing a process's connections.

`herald worker --queues high,normal,low` runs one Worker per named queue in one event loop.
A process that serves no high queue (the bulk lane) lowers its CPU priority
(HERALD_BULK_WORKER_NICENESS): where it shares a machine with the API and the high lane, a
campaign's batches take only the CPU those leave.
On SIGTERM or SIGINT every worker stops taking jobs, lets running ones finish (up to
SHUTDOWN_GRACE seconds), then exits.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from arq.worker import Worker
from prometheus_client import start_http_server
from redis.asyncio import Redis

from app import crypto
from app.auth.mailer import SystemMailer
from app.db import create_engine, session_factory
from app.delivery.routing import Router
from app.delivery.service import Deliverer
from app.models import load_all
from app.observability.tracing import start_tracing, stop_tracing
from app.providers.breaker import CircuitBreakers
from app.providers.http import new_client
from app.ratelimit.buckets import CostBuckets, TokenBuckets
from app.settings import Settings
from app.templates.pool import RenderPool
from app.templates.renderer import Renderer
from app.usage.meter import Meter
from app.webhooks import delivery as webhook_delivery
from jobs.cron import cron_jobs
from jobs.functions import FUNCTIONS
from jobs.queues import POLL_DELAYS, QUEUE_NAMES, redis_settings

log = structlog.get_logger(__name__)

SHUTDOWN_GRACE = 25
# Closing a Worker deletes its health-check key, a command its pool retries for as long as
# Redis is down: a worker stopping while Redis is gone (stopped at the same moment, as when
# `herald dev` is killed) would never exit. The key expires by itself.
CLOSE_SECONDS = 10
HEALTH_CHECK_INTERVAL = 30


def build_worker(
    queue: str,
    *,
    redis_url: str,
    ctx: dict[str, Any],
    burst: bool = False,
    handle_signals: bool = False,
) -> Worker:
    return Worker(
        functions=FUNCTIONS,
        # The relay and the sweeper, on every queue: arq runs each tick once (jobs/cron.py).
        # A burst worker stops when its queue is empty; a tick would keep it waiting.
        cron_jobs=None if burst else cron_jobs(),
        queue_name=QUEUE_NAMES[queue],
        redis_settings=redis_settings(redis_url, wait_for_redis=True),
        ctx=ctx,
        burst=burst,
        handle_signals=handle_signals,
        job_completion_wait=SHUTDOWN_GRACE,
        poll_delay=POLL_DELAYS[queue],
        health_check_interval=HEALTH_CHECK_INTERVAL,
        keep_result=60,
        max_jobs=20,
    )


@asynccontextmanager
async def worker_context(
    settings: Settings, database_url: str, redis_url: str | None = None
) -> AsyncIterator[dict[str, Any]]:
    """What every job of a process shares: database sessions, one HTTP client, the deliverer
    with its token buckets and circuit breakers, the render processes of dispatch, and the
    sender of tenants' webhook events."""
    load_all()  # foreign keys resolve against every table, not only the ones jobs import
    tracing = start_tracing(settings.otlp_endpoint, settings.trace_sample_ratio, "herald-worker")
    engine = create_engine(database_url)
    sessions = session_factory(engine)
    url = redis_url or settings.redis_url
    assert url is not None, "workers need REDIS_URL"
    redis = Redis.from_url(url)
    router = Router(buckets=TokenBuckets(redis), breakers=CircuitBreakers(redis))
    render_pool = RenderPool(
        processes=settings.render_processes, memory_mb=settings.render_memory_mb
    )
    render_pool.start()
    mailer = SystemMailer(settings.smtp_url, settings.mail_from)
    try:
        async with new_client() as http:
            yield {
                "settings": settings,
                "sessions": sessions,
                "deliverer": Deliverer(
                    sessions=sessions, http=http, settings=settings, router=router
                ),
                "renderer": Renderer(render_pool, CostBuckets(redis)),
                # None: metering is off (HERALD_METERING), nothing counted nor flushed.
                "meter": Meter(redis) if settings.metering else None,
                "mailer": mailer,  # Herald's own mail: quota warnings to tenants' owners
                "webhooks": webhook_delivery.Sender(
                    sessions=sessions,
                    client=http,
                    keyring=crypto.keyring_for(settings),
                    allow_private=settings.allow_private_urls,
                    mailer=mailer,
                ),
            }
    finally:
        await asyncio.to_thread(render_pool.close)
        await redis.aclose()
        await engine.dispose()
        await asyncio.to_thread(stop_tracing, tracing)


async def run_workers(
    settings: Settings, database_url: str, redis_url: str, queues: tuple[str, ...]
) -> None:
    if "high" not in queues and settings.bulk_worker_niceness:
        # Before the render processes start, which inherit it. The high lane's processes,
        # the API and PostgreSQL keep theirs, so the kernel gives them the CPU first.
        os.nice(settings.bulk_worker_niceness)
    if settings.worker_metrics_port is not None:
        # Delivery counters, provider latency and breaker changes live in this process.
        start_http_server(settings.worker_metrics_port, addr=settings.host)
        log.info("worker metrics", url=f"http://{settings.host}:{settings.worker_metrics_port}/")
    async with worker_context(settings, database_url, redis_url) as ctx:
        await _serve(ctx, redis_url, queues)


async def _serve(ctx: dict[str, Any], redis_url: str, queues: tuple[str, ...]) -> None:
    workers = [build_worker(queue, redis_url=redis_url, ctx=ctx) for queue in queues]
    loop = asyncio.get_running_loop()

    def stop(signum: signal.Signals) -> None:
        log.info("worker shutting down", signal=signum.name, grace_seconds=SHUTDOWN_GRACE)
        # Sends already made finish; claimed messages not yet sent are given back.
        ctx["deliverer"].stopping.set()
        for worker in workers:
            worker.handle_sig_wait_for_completion(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop, signum)
    for worker in workers:
        worker.main_task = asyncio.create_task(worker.main())
    log.info("workers started", queues=[QUEUE_NAMES[q] for q in queues])
    try:
        await asyncio.gather(*(w.main_task for w in workers if w.main_task), return_exceptions=True)
    finally:
        closing = asyncio.gather(*(worker.close() for worker in workers))
        try:
            await asyncio.wait_for(closing, CLOSE_SECONDS)
        except TimeoutError:
            log.warning("workers closed without Redis", seconds=CLOSE_SECONDS)
