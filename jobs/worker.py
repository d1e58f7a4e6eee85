"""Worker processes: one arq Worker per priority queue, sharing a process's connections.

`herald worker --queues high,normal,low` runs one Worker per named queue in one event loop.
On SIGTERM or SIGINT every worker stops taking jobs, lets running ones finish (up to
SHUTDOWN_GRACE seconds), then exits.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from arq.worker import Worker

from app.db import create_engine, session_factory
from app.delivery.service import Deliverer
from app.models import load_all
from app.providers.http import new_client
from app.settings import Settings
from jobs.functions import FUNCTIONS
from jobs.queues import POLL_DELAYS, QUEUE_NAMES, redis_settings

log = structlog.get_logger(__name__)

SHUTDOWN_GRACE = 25
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
        queue_name=QUEUE_NAMES[queue],
        redis_settings=redis_settings(redis_url),
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
async def worker_context(settings: Settings, database_url: str) -> AsyncIterator[dict[str, Any]]:
    """What every job of a process shares: database sessions, one HTTP client, the deliverer."""
    load_all()  # foreign keys resolve against every table, not only the ones jobs import
    engine = create_engine(database_url)
    sessions = session_factory(engine)
    async with new_client() as http:
        yield {
            "settings": settings,
            "sessions": sessions,
            "deliverer": Deliverer(sessions=sessions, http=http, settings=settings),
        }
    await engine.dispose()


async def run_workers(
    settings: Settings, database_url: str, redis_url: str, queues: tuple[str, ...]
) -> None:
    async with worker_context(settings, database_url) as ctx:
        await _serve(ctx, redis_url, queues)


async def _serve(ctx: dict[str, Any], redis_url: str, queues: tuple[str, ...]) -> None:
    workers = [build_worker(queue, redis_url=redis_url, ctx=ctx) for queue in queues]
    loop = asyncio.get_running_loop()

    def stop(signum: signal.Signals) -> None:
        log.info("worker shutting down", signal=signum.name, grace_seconds=SHUTDOWN_GRACE)
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
        for worker in workers:
            await worker.close()
