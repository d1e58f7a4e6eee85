"""`herald bench ingest`: single POST /v1/notifications, accepted and committed per second.

Starts the API (several server processes) and drives it with wrk (Debian package `wrk`),
whose C load generator leaves the two cores to the server; every request is one
single-recipient notification with its own data. Then it counts the committed rows: every
202 must be one. No worker runs: the dispatch jobs the API enqueued are removed afterwards,
so no worker (nor a later benchmark) inherits the backlog. Its figure is divided by the
`/healthz` requests/s of the same server set-up (the `healthz` ceiling).

`--metered` measures what usage metering costs intake: the tenant has a live key on a plan
that blocks at a quota (`bench`, added to a copy of the plans file with a quota no run
reaches), so that every request reserves its message against the quota in Redis; the run is
made twice, with HERALD_METERING on and off, and reported side by side. (A test key, as the
plain run uses, is never metered.)
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import uuid
from pathlib import Path

import redis.asyncio as aioredis
from sqlalchemy import select

from app.db import create_engine, session_factory
from app.delivery import outbox
from app.notifications.models import Notification
from app.seed import create_tenant_with_key
from app.settings import Settings
from app.tenants import plans
from bench.common import (
    free_port,
    herald,
    prepare_tenant,
    retire_tenants,
    running,
    service_env,
    wait_ready,
    wrk,
)
from bench.report import Progress, Section, Target
from jobs.queues import withdraw

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


async def _committed(database_url: str, redis_url: str, tenant_id: uuid.UUID) -> int:
    """The tenant's committed notifications; their dispatch jobs are taken off the queue."""
    engine = create_engine(database_url, pool=False)
    async with session_factory(engine)() as session:
        ids = list(
            await session.scalars(
                select(Notification.id).where(Notification.tenant_id == tenant_id)
            )
        )
    await engine.dispose()
    client = aioredis.Redis.from_url(redis_url)
    try:
        for start in range(0, len(ids), 1_000):
            page = ids[start : start + 1_000]
            await withdraw(client, [outbox.dispatch(i, "normal", None) for i in page])
    finally:
        await client.aclose()
    return len(ids)


BENCH_PLAN = """

[plans.bench]
api_rate = 100000
api_burst = 100000
send_rate = 20000
send_burst = 20000
render_ms_rate = 4000
render_ms_burst = 60000
log_retention_days = 7
members = 0
overage = "block"

[plans.bench.quota]
email = 1000000000
"""


def plans_with_bench(folder: Path) -> Path:
    """The default plans file and a `bench` plan blocking at a quota no run reaches."""
    path = folder / "plans.toml"
    path.write_text(plans.DEFAULT_FILE.read_text() + BENCH_PLAN)
    return path


def metered(
    settings: Settings,
    progress: Progress,
    *,
    seconds: int,
    connections: int,
    api_processes: int,
    rounds: int = 2,
    profile: Path | None = None,
) -> list[Section]:
    """The same live, quota-checked run with metering on and off, `rounds` times each,
    alternating which goes first (a run's figure moves by several percent from one run to
    the next on a shared machine: one pair says little), then what metering costs: one
    minus the ratio of the mean accepted rates, against the 5 % allowed. Profiled: one
    server process each, profiles in `profile`/on and `profile`/off (last round's)."""
    sections = []
    accepted: dict[str, list[float]] = {"on": [], "off": []}
    with tempfile.TemporaryDirectory() as folder:
        plans_file = str(plans_with_bench(Path(folder)))
        for round_ in range(rounds):
            order = ("on", "off") if round_ % 2 == 0 else ("off", "on")
            for metering in order:
                section = run(
                    settings,
                    progress,
                    seconds=seconds,
                    connections=connections,
                    api_processes=api_processes,
                    mode="live",
                    plan="bench",
                    env={"HERALD_PLANS_FILE": plans_file, "HERALD_METERING": metering},
                    profile=None if profile is None else profile / metering,
                )
                section.bench = f"ingest (live, metering {metering}, round {round_ + 1})"
                accepted[metering].append(section.figures[0].value)
                sections.append(section)
    on, off = (sum(accepted[m]) / len(accepted[m]) for m in ("on", "off"))
    cost = Section("metering's cost to intake")
    cost.add("accepted, metering on (mean)", on, "notifications/s", ceiling="healthz")
    cost.add("accepted, metering off (mean)", off, "notifications/s", ceiling="healthz")
    cost.add("cost", 100 * (1 - on / off), "%", target=Target(5.0))
    runs = {m: ", ".join(f"{v:,.0f}" for v in accepted[m]) for m in ("on", "off")}
    cost.notes.append(
        f"{rounds} round(s) of each, alternating: on {runs['on']}; off {runs['off']}"
        " notifications/s"
    )
    return [*sections, cost]


def run(
    settings: Settings,
    progress: Progress,
    *,
    seconds: int,
    connections: int,
    api_processes: int,
    profile: Path | None = None,
    mode: str = "test",
    plan: str = "enterprise",
    env: dict[str, str] | None = None,
) -> Section:
    assert settings.database_url is not None and settings.redis_url is not None
    progress.stage("ingest: starting the API")
    tenant_id, secret = asyncio.run(
        create_tenant_with_key(settings.database_url, "bench ingest", mode, plan=plan)
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = herald("api", "--port", str(port), "--workers", str(api_processes))
    if profile is not None:  # one server process, profiled (see bench/profiled.py)
        profile.mkdir(parents=True, exist_ok=True)
        output = str(profile / "api.prof")
        command = [sys.executable, "-m", "bench.profiled", output, "api", "--port", str(port)]
    with running([command], service_env(settings, **(env or {}))):
        wait_ready(url)
        prepare_tenant(url, secret, recipients=100)
        progress.stage(f"ingest: wrk POST /v1/notifications for {seconds} s")
        found = wrk(
            url,
            seconds=seconds,
            connections=connections,
            script=WRK_SCRIPT % {"secret": secret},
        )
    committed = asyncio.run(_committed(settings.database_url, settings.redis_url, tenant_id))
    retire_tenants(settings.database_url, tenant_id)
    section = Section("ingest")
    section.add("accepted", committed / seconds, "notifications/s", ceiling="healthz")
    section.add("latency p50", found["p50_ms"], "ms")
    section.add("latency p99", found["p99_ms"], "ms")
    section.notes += [
        f"{api_processes} API processes, wrk {connections} connections, {seconds} s",
        f"requests {found['requests']:,.0f} ({found['not_2xx']:,.0f} not 202), "
        f"committed rows {committed:,}",
    ]
    return section
