"""`herald bench ingest`: single POST /v1/notifications, accepted and committed per second.

Starts the API (several server processes) against the configured or embedded services and
drives it with wrk (Debian package `wrk`), whose C load generator leaves the two cores to
the server; every request is one single-recipient notification with its own data. Then it
counts the committed rows: every 202 must be one.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import click
import redis
from sqlalchemy import func, select

from app.db import create_engine, session_factory
from app.notifications.models import Notification
from app.seed import create_tenant_with_key
from app.settings import Settings
from bench.common import (
    free_port,
    herald,
    prepare_tenant,
    retire_tenant,
    running,
    service_env,
    wait_ready,
)

SCRATCH_REDIS_DB = 15
WRK_SCRIPT = """
local n = 0
wrk.method = "POST"
wrk.headers["Authorization"] = "Bearer %(secret)s"
wrk.headers["Content-Type"] = "application/json"
request = function()
  n = n + 1
  local to = '"to": ["user-' .. (n %% 100) .. '"]'
  local body = '{"template": "bench", ' .. to .. ', "data": {"order": ' .. n .. '}}'
  return wrk.format(nil, "/v1/notifications", nil, body)
end
"""


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


def _wrk(url: str, secret: str, seconds: int, connections: int) -> str:
    with tempfile.TemporaryDirectory() as folder:
        script = Path(folder) / "notify.lua"
        script.write_text(WRK_SCRIPT % {"secret": secret})
        command = [
            "wrk",
            "-t2",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(script),
            url,
        ]
        return subprocess.run(command, check=True, capture_output=True, text=True).stdout


def _scratch_database(redis_url: str) -> str:
    return urlsplit(redis_url)._replace(path=f"/{SCRATCH_REDIS_DB}").geturl()


def _figure(pattern: str, text: str) -> str:
    match = re.search(pattern, text)
    return match.group(1) if match else "?"


def run(settings: Settings, *, seconds: int, connections: int, api_processes: int) -> None:
    if shutil.which("wrk") is None:
        raise click.ClickException("herald bench ingest needs wrk: apt-get install wrk")
    assert settings.database_url is not None
    tenant_id, secret = asyncio.run(
        create_tenant_with_key(settings.database_url, "bench ingest", "test", plan="enterprise")
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = herald("api", "--port", str(port), "--workers", str(api_processes))
    # Ingest only: the dispatch jobs it enqueues go to a Redis database of their own, emptied
    # afterwards, so no worker (nor a later benchmark) inherits the backlog.
    redis_url = _scratch_database(settings.redis_url or "")
    with running([command], service_env(settings, REDIS_URL=redis_url)):
        wait_ready(url)
        prepare_tenant(url, secret, recipients=100)
        report = _wrk(url, secret, seconds, connections)
    redis.Redis.from_url(redis_url).flushdb()
    committed = asyncio.run(_committed(settings.database_url, tenant_id))
    retire_tenant(settings.database_url, tenant_id)
    requests = int(_figure(r"(\d+) requests in", report))
    failed = int(
        _figure(r"Non-2xx or 3xx responses: (\d+)", report + "Non-2xx or 3xx responses: 0")
    )
    print(f"ingest: {api_processes} API processes, wrk {connections} connections, {seconds} s")
    print(f"  requests         {requests} ({failed} not 202)")
    print(f"  committed rows   {committed}")
    print(f"  throughput       {committed / seconds:,.0f} notifications/s accepted and committed")
    p50, p99 = _figure(r"50%\s+(\S+)", report), _figure(r"99%\s+(\S+)", report)
    print(f"  latency          p50 {p50} · p99 {p99}")
