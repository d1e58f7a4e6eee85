"""`herald bench e2e`: N recipients through dispatch and delivery on the sandbox provider.

Starts one API process and worker processes, sends notifications of up to 1,000
recipients each with a test key (sandbox provider), waits until every message is sent,
and reports messages/s (divided by the `pg_claim` ceiling) and the accept→sent latency
percentiles read from PostgreSQL.

Where the time goes, from the rows' own timestamps: each message's accept → written
(`notifications.created_at` → `messages.created_at`: the dispatch job's wait in its
queue, rendering and the insert), written → claimed (→ `attempts.started_at`: the deliver
job's wait and the claim) and its provider call (`attempts.latency_ms`); and over the run,
the seconds in which nothing moved (no dispatch finished, no message claimed): a stall
shows there, with the stretch it lasted.

A warm-up tenant's notifications go through first, and the figures count only what is
sent after it: the workers' start (the interpreter, its render processes, the first
connections) is not what the bench measures. With `--profile DIR` each worker runs under
cProfile, counting its CPU time (bench/profiled.py), and writes DIR/worker-N.prof when it
stops (`python -m pstats` reads them).
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
from sqlalchemy import and_, func, select

from app.db import create_engine, session_factory
from app.notifications.models import Attempt, Message, Notification
from app.seed import create_tenant_with_key
from app.settings import Settings
from bench.common import (
    free_port,
    herald,
    percentile,
    prepare_tenant,
    retire_tenants,
    running,
    service_env,
    wait_ready,
)
from bench.report import Progress, Section

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


async def _wait_sent(
    database_url: str, tenant_id: uuid.UUID, expected: int, wait_seconds: float, progress: Progress
) -> None:
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
            progress.update(done or 0, expected)
            if (done or 0) >= expected:
                break
            await asyncio.sleep(0.5)
    finally:
        await engine.dispose()


@dataclass
class Timeline:
    """Each sent message's moments, in seconds from the first accept."""

    accepted: list[float]
    written: list[float]
    claimed: list[float]
    sent: list[float]
    dispatched: list[float]  # one per notification
    latency_ms: list[float]  # the provider call


async def _timeline(database_url: str, tenant_id: uuid.UUID) -> Timeline:
    engine = create_engine(database_url, pool=False)
    try:
        async with session_factory(engine)() as session:
            rows = (
                await session.execute(
                    select(
                        Notification.created_at,
                        Message.created_at,
                        Attempt.started_at,
                        Message.sent_at,
                        Attempt.latency_ms,
                    )
                    .join(Notification, Notification.id == Message.notification_id)
                    .join(Attempt, and_(Attempt.message_id == Message.id, Attempt.n == 1))
                    .where(Message.tenant_id == tenant_id, Message.status == "sent")
                )
            ).all()
            dispatched = (
                await session.execute(
                    select(Notification.created_at, Notification.dispatched_at).where(
                        Notification.tenant_id == tenant_id
                    )
                )
            ).all()
    finally:
        await engine.dispose()
    if not rows:
        return Timeline([], [], [], [], [], [])
    origin = min(created for created, _ in dispatched)
    rows = [row for row in rows if row[3] is not None]  # sent rows have sent_at

    def at(moment: datetime) -> float:
        return (moment - origin).total_seconds()

    return Timeline(
        accepted=[at(r[0]) for r in rows],
        written=[at(r[1]) for r in rows],
        claimed=[at(r[2]) for r in rows],
        sent=[at(r[3]) for r in rows if r[3] is not None],
        dispatched=[at(d) for _, d in dispatched if d is not None],
        latency_ms=[float(r[4]) for r in rows],
    )


def idle_stretches(timeline: Timeline, width: float = 1.0) -> list[tuple[float, float]]:
    """Stretches of whole `width`-second bins, between the first accept and the last send,
    in which no dispatch finished and no message was claimed or sent."""
    if not timeline.sent:
        return []
    moving = {int(t // width) for t in timeline.claimed + timeline.dispatched + timeline.sent}
    last = int(max(timeline.sent) // width)
    stretches: list[tuple[float, float]] = []
    begin: int | None = None
    for n in range(last + 1):
        if n not in moving and begin is None:
            begin = n
        elif n in moving and begin is not None:
            stretches.append((begin * width, n * width))
            begin = None
    if begin is not None:
        stretches.append((begin * width, (last + 1) * width))
    return stretches


def _seconds(values: list[float], fraction: float) -> float:
    return percentile(values, fraction)


def describe(timeline: Timeline, intake: float, recipients: int, section: Section) -> None:
    """The figures and notes of one measured run."""
    sent = len(timeline.sent)
    span = max(timeline.sent) if sent else float("nan")
    section.add("throughput", sent / span if sent else float("nan"), "messages/s", "pg_claim")
    latencies = [s - a for s, a in zip(timeline.sent, timeline.accepted, strict=True)]
    section.add("accept→sent p50", _seconds(latencies, 0.5), "s")
    section.add("accept→sent p99", _seconds(latencies, 0.99), "s")
    to_written = [w - a for w, a in zip(timeline.written, timeline.accepted, strict=True)]
    to_claimed = [c - w for c, w in zip(timeline.claimed, timeline.written, strict=True)]
    idle = idle_stretches(timeline)
    idle_total = sum(end - begin for begin, end in idle)
    section.add("accept→written p50", _seconds(to_written, 0.5), "s")
    section.add("written→claimed p50", _seconds(to_claimed, 0.5), "s")
    section.add("idle", idle_total, "s")
    section.notes.append(f"sent {sent} of {recipients}; accepted in {intake:.2f} s (client)")
    if sent:
        mean = sum(latencies) / sent
        shares = {
            "accept→written (dispatch: queue, render, insert)": sum(to_written) / sent,
            "written→claimed (deliver: queue, claim)": sum(to_claimed) / sent,
            "claimed→sent": sum(s - c for s, c in zip(timeline.sent, timeline.claimed, strict=True))
            / sent,
        }
        section.notes.append(f"mean accept→sent {mean:.2f} s, of which:")
        for name, value in shares.items():
            section.notes.append(f"  {name:<50} {value:6.2f} s ({value / mean:.0%})")
        section.notes.append(
            f"provider call p50 {percentile(timeline.latency_ms, 0.5):.0f} ms; "
            f"last dispatch done at {max(timeline.dispatched, default=float('nan')):.2f} s; "
            f"last sent at {span:.2f} s"
        )
        per_second = Counter(int(t) for t in timeline.sent)
        section.notes.append(
            "sent per second: " + " ".join(str(per_second[n]) for n in range(int(span) + 1))
        )
    for begin, end in idle:
        section.notes.append(f"IDLE {begin:.0f} s to {end:.0f} s: nothing dispatched or claimed")
    section.details["idle"] = [list(stretch) for stretch in idle]


def worker_command(profile: Path | None, n: int) -> list[str]:
    """`herald worker` for the normal queue; under cProfile, writing `profile`/worker-n.prof
    when it stops (SIGTERM lets it finish)."""
    if profile is None:
        return herald("worker", "--queues", "normal")
    output = str(profile / f"worker-{n}.prof")
    return [sys.executable, "-m", "bench.profiled", output, "worker", "--queues", "normal"]


def run(
    settings: Settings,
    progress: Progress,
    *,
    recipients: int,
    workers: int,
    timeout: float,
    profile: Path | None = None,
) -> Section:
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
    progress.stage("e2e: starting the API, writing recipients")
    with running([herald("api", "--port", str(port))], env):
        wait_ready(base_url)
        prepare_tenant(base_url, secret, recipients)
        prepare_tenant(base_url, warm_secret, WARM_UP)
        if profile is not None:
            profile.mkdir(parents=True, exist_ok=True)
        commands = [worker_command(profile, n) for n in range(workers)]
        with running(commands, env):
            progress.stage(f"e2e: warm-up ({WARM_UP} messages)")
            asyncio.run(_send(base_url, warm_secret, WARM_UP))
            asyncio.run(_wait_sent(settings.database_url, warm_id, WARM_UP, timeout, progress))
            progress.stage(f"e2e: {recipients} messages")
            intake = asyncio.run(_send(base_url, secret, recipients))
            asyncio.run(_wait_sent(settings.database_url, tenant_id, recipients, timeout, progress))
    timeline = asyncio.run(_timeline(settings.database_url, tenant_id))
    retire_tenants(settings.database_url, tenant_id, warm_id)
    section = Section("e2e")
    section.notes.append(
        f"{recipients} recipients in notifications of {BATCH}, {workers} worker process(es), "
        "sandbox e-mail provider"
    )
    describe(timeline, intake, recipients, section)
    return section
