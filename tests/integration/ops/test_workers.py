"""arq workers: each priority queue is consumed by its own worker, and SIGTERM is graceful."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from arq import ArqRedis
from arq.jobs import Job, JobStatus
from sqlalchemy.ext.asyncio import AsyncSession

from app.runtime import ServiceUrls
from bench.memory import descendants, parents
from jobs import queues
from jobs.worker import build_worker
from tests.send_path import notification, notify, put_recipient, put_template
from tests.support import free_port, make_tenant


@pytest.fixture(autouse=True)
async def empty_queues(service_urls: ServiceUrls) -> None:
    """Jobs other tests left deferred (retries) would otherwise land in these workers."""
    pool = await queues.connect(service_urls.redis_url)
    await pool.delete(*queues.QUEUE_NAMES.values())
    await pool.aclose()


async def ping(pool: ArqRedis, queue: str, token: str, job_id: str) -> bool:
    """A ping job (jobs/functions.py) on a queue; False when the id is taken."""
    job = await pool.enqueue_job(
        "ping", token, _queue_name=queues.QUEUE_NAMES[queue], _job_id=job_id
    )
    return job is not None


async def test_each_queue_runs_its_own_jobs(service_urls: ServiceUrls) -> None:
    pool = await queues.connect(service_urls.redis_url)
    try:
        for queue in queues.QUEUE_NAMES:
            assert await ping(pool, queue, queue, f"ping-{queue}")
        # The same id cannot be enqueued twice while the first is pending.
        assert not await ping(pool, "high", "again", "ping-high")

        high = build_worker("high", redis_url=service_urls.redis_url, ctx={}, burst=True)
        await high.main()
        await high.close()
        assert high.jobs_complete == 1
        assert (
            await Job("ping-high", pool, _queue_name=queues.QUEUE_NAMES["high"]).result(timeout=1)
            == "pong:high"
        )
        # A high-priority worker leaves the other queues alone.
        assert (
            await Job("ping-low", pool, _queue_name=queues.QUEUE_NAMES["low"]).status()
            == JobStatus.queued
        )

        for queue in ("normal", "low"):
            worker = build_worker(queue, redis_url=service_urls.redis_url, ctx={}, burst=True)
            await worker.main()
            await worker.close()
            assert (
                await Job(f"ping-{queue}", pool, _queue_name=queues.QUEUE_NAMES[queue]).result(
                    timeout=1
                )
                == f"pong:{queue}"
            )
    finally:
        await pool.aclose()


async def test_worker_process_serves_and_stops_on_sigterm(service_urls: ServiceUrls) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": service_urls.database_url,
        "REDIS_URL": service_urls.redis_url,
        "HERALD_ENV": "test",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "worker", "--queues", "high,normal"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    pool = await queues.connect(service_urls.redis_url)
    try:
        await ping(pool, "normal", "from-test", "ping-process")
        assert (
            await Job("ping-process", pool, _queue_name=queues.QUEUE_NAMES["normal"]).result(
                timeout=20
            )
            == "pong:from-test"
        )
        process.send_signal(signal.SIGTERM)
        exit_code = await asyncio.to_thread(process.wait, 30)
        assert exit_code == 0
    finally:
        if process.poll() is None:
            process.kill()
        await pool.aclose()


def _stat(pid: int) -> list[str]:
    # /proc/<pid>/stat, the fields after the command's closing parenthesis (state first).
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


@pytest.mark.parametrize(("served", "niceness"), [("normal,low", 10), ("high,normal", 0)])
async def test_a_worker_of_the_bulk_queues_alone_yields_the_cpu(
    service_urls: ServiceUrls, served: str, niceness: int
) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": service_urls.database_url,
        "REDIS_URL": service_urls.redis_url,
        "HERALD_ENV": "test",
    }
    env.pop("HERALD_BULK_WORKER_NICENESS", None)  # the default
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "worker", "--queues", served],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    pool = await queues.connect(service_urls.redis_url)
    try:
        job_id = f"ping-nice-{uuid.uuid4()}"
        await ping(pool, "normal", "nice", job_id)
        job = Job(job_id, pool, _queue_name=queues.QUEUE_NAMES["normal"])
        assert await job.result(timeout=20) == "pong:nice"  # serving, its render pool started
        renders = descendants(process.pid, parents())
        assert renders  # the render processes inherit the worker's niceness
        # Field 19 of stat (the 17th after the command): the niceness.
        expected = min(19, os.nice(0) + niceness)  # added to the niceness it was started with
        assert {int(_stat(pid)[16]) for pid in [process.pid, *renders]} == {expected}
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(process.wait, 30)
        finally:
            if process.poll() is None:
                process.kill()
        await pool.aclose()


async def test_a_notification_through_worker_processes(
    client: httpx.AsyncClient, session: AsyncSession, service_urls: ServiceUrls
) -> None:
    """`herald worker` processes (not in-process workers) take a notification to `sent`, and
    serve the delivery metrics they count."""
    sandbox = await make_tenant(session, "Process-delivered", mode="test")
    await put_template(
        client, sandbox, "proc", {"inbox": {"title": "Hi", "body": "From a process"}}
    )
    await put_recipient(client, sandbox, "proc-1")
    metrics_port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": service_urls.database_url,
        "REDIS_URL": service_urls.redis_url,
        "HERALD_ENV": "test",
        "HERALD_WORKER_METRICS_PORT": str(metrics_port),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "worker"], env=env, stdout=subprocess.DEVNULL
    )
    try:
        accepted = await notify(client, sandbox, template="proc", to=["proc-1"])
        for _ in range(100):
            view = await notification(client, sandbox, accepted["id"])
            if view["counts"].get("sent"):
                break
            await asyncio.sleep(0.1)
        assert view["counts"] == {"sent": 1}
        async with httpx.AsyncClient() as scraper:
            metrics = (await scraper.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
        sent = 'herald_messages_total{channel="inbox",outcome="sent",provider="inbox"}'
        assert [line for line in metrics.splitlines() if line.startswith(sent)] == [f"{sent} 1.0"]
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 30) == 0
