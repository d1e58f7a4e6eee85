"""`herald bench ratelimit`: worker processes sharing one provider's token bucket.

One tenant (live key) has one webhook provider config at `--rate` messages/s with burst
`--burst`; its recipients' webhook URLs point at a local receiver, which notes when each
message arrives. A backlog of `--seconds` times `--rate` messages is dispatched with the
channel paused (kill switch), then released at once; `--workers` worker processes deliver
it, and the bench prints the messages received in each second, the overall rate, and the
busiest one-second window, each as a ratio to the contract (rate, rate + burst): the
contract is this bench's ceiling, and it must be met (≥ 99 % of the rate whenever the
CPU allows) and never exceeded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import threading
import time
import uuid
from bisect import bisect_left
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
from sqlalchemy import func, select

from app.db import create_engine, session_factory
from app.notifications.models import Attempt, Message
from app.seed import create_tenant_with_key
from app.settings import Settings
from bench.common import free_port, herald, retire_tenants, running, service_env, wait_ready
from bench.report import Progress, Section

BATCH = 1_000


class Receiver:
    """The tenant's webhook endpoint, in a process of its own: arrival time of each message.

    A provider is another machine: its clock must not wait for our workers' CPU. So the
    receiver runs apart, at a higher scheduling priority when the system allows it, and
    stamps each request as it is read. `arrivals()` fetches what it noted.
    """

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        ready = context.Queue()
        self.process = context.Process(target=_serve_receiver, args=(ready,), daemon=True)
        self.process.start()
        port = ready.get(timeout=30)
        self.url = f"http://127.0.0.1:{port}/hook"
        self._client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)

    def count(self) -> int:
        return int(self._client.get("/count").json())

    def arrivals(self) -> tuple[list[float], int]:
        """Arrival times (first arrival of each message id) and the number of duplicates."""
        found = self._client.get("/arrivals").json()
        return sorted(found["arrivals"]), int(found["duplicates"])

    def close(self) -> None:
        self._client.close()
        self.process.terminate()
        self.process.join(timeout=10)


def _serve_receiver(ready: Any) -> None:
    with contextlib.suppress(OSError):
        os.nice(-10)  # allowed as root; otherwise the default priority
    arrivals: dict[str, float] = {}
    duplicates = 0
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            nonlocal duplicates
            arrived = time.time()
            self.rfile.read(int(self.headers.get("content-length") or 0))
            message_id = self.headers.get("webhook-id", "")
            with lock:
                if message_id in arrivals:
                    duplicates += 1
                else:
                    arrivals[message_id] = arrived
            self._answer(204, b"")

        def do_GET(self) -> None:
            with lock:
                if self.path == "/count":
                    body = json.dumps(len(arrivals))
                else:
                    body = json.dumps(
                        {"arrivals": list(arrivals.values()), "duplicates": duplicates}
                    )
            self._answer(200, body.encode())

        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    # A deep accept queue: refused connections would count as provider failures.
    ThreadingHTTPServer.request_queue_size = 1024
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    ready.put(server.server_address[1])
    server.serve_forever()


def _prepare(
    base_url: str, secret: str, receiver: Receiver, rate: float, burst: int, n: int
) -> None:
    headers = {"Authorization": f"Bearer {secret}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=120) as client:
        config = {
            "channel": "webhook",
            "provider": "webhook",
            "name": "bench receiver",
            "rate_per_second": rate,
            "burst": burst,
        }
        client.post("/v1/providers", json=config).raise_for_status()
        template = {"name": "Bench", "content": {"webhook": {"body": {"n": "{{ n }}"}}}}
        client.put("/v1/templates/bench", json=template).raise_for_status()
        for start in range(0, n, BATCH):
            batch = [
                {"external_id": f"hook-{i}", "webhook_url": receiver.url}
                for i in range(start, min(n, start + BATCH))
            ]
            client.post("/v1/recipients/batch", json={"recipients": batch}).raise_for_status()


def _send(base_url: str, secret: str, n: int) -> None:
    headers = {"Authorization": f"Bearer {secret}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=120) as client:
        for start in range(0, n, BATCH):
            to = [f"hook-{i}" for i in range(start, min(n, start + BATCH))]
            body = {"template": "bench", "to": to, "data": {"n": start}}
            client.post("/v1/notifications", json=body).raise_for_status()


def _switch(base_url: str, secret: str, mode: str) -> None:
    headers = {"Authorization": f"Bearer {secret}"}
    response = httpx.put(
        f"{base_url}/v1/tenant/kill-switches/webhook", json={"mode": mode}, headers=headers
    )
    response.raise_for_status()


def _wait_dispatched(database_url: str, tenant_id: uuid.UUID, n: int, timeout: float) -> None:
    async def written() -> int:
        engine = create_engine(database_url, pool=False)
        async with session_factory(engine)() as session:
            count = await session.scalar(
                select(func.count()).select_from(Message).where(Message.tenant_id == tenant_id)
            )
        await engine.dispose()
        return int(count or 0)

    deadline = time.monotonic() + timeout
    while asyncio.run(written()) < n and time.monotonic() < deadline:
        time.sleep(0.5)


def _wait(receiver: Receiver, n: int, timeout: float, progress: Progress) -> None:
    deadline = time.monotonic() + timeout
    while (count := receiver.count()) < n and time.monotonic() < deadline:
        progress.update(count, n)
        time.sleep(0.5)


def busiest_window(times: list[float], width: float = 1.0) -> int:
    """The most arrivals in any window of `width` seconds (windows start at an arrival)."""
    ordered = sorted(times)
    return max(
        (bisect_left(ordered, start + width) - i for i, start in enumerate(ordered)), default=0
    )


def run(
    settings: Settings,
    progress: Progress,
    *,
    rate: float,
    burst: int,
    seconds: int,
    workers: int,
) -> Section:
    assert settings.database_url is not None
    tenant_id, secret = asyncio.run(
        create_tenant_with_key(settings.database_url, "bench ratelimit", "live", plan="enterprise")
    )
    total = int(rate * seconds)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = service_env(settings, HERALD_ALLOW_PRIVATE_URLS="true")
    progress.stage("ratelimit: starting the API and the receiver")
    receiver = Receiver()
    with contextlib.closing(receiver), running([herald("api", "--port", str(port))], env):
        wait_ready(base_url)
        _prepare(base_url, secret, receiver, rate, burst, total)
        commands = [herald("worker", "--queues", "normal") for _ in range(workers)]
        with running(commands, env):
            # The backlog first: with the channel paused, dispatch writes every message
            # and none is sent; lifting the pause releases them all at once.
            progress.stage(f"ratelimit: a backlog of {total} messages, channel paused")
            _switch(base_url, secret, "pause")
            _send(base_url, secret, total)
            _wait_dispatched(settings.database_url, tenant_id, total, timeout=120)
            progress.stage(f"ratelimit: delivering at {rate:g}/s")
            _switch(base_url, secret, "off")
            _wait(receiver, total, seconds * 3 + 60, progress)
        times, duplicates = receiver.arrivals()
    attempts = asyncio.run(_attempts(settings.database_url, tenant_id))
    retire_tenants(settings.database_url, tenant_id)
    return _report(times, total, duplicates, attempts, rate=rate, burst=burst, workers=workers)


async def _attempts(database_url: str, tenant_id: uuid.UUID) -> str:
    """Provider calls by outcome: a failed call would trip the breaker and skew the rate."""
    engine = create_engine(database_url, pool=False)
    async with session_factory(engine)() as session:
        rows = await session.execute(
            select(Attempt.outcome, Attempt.error_class, func.count())
            .where(Attempt.tenant_id == tenant_id)
            .group_by(Attempt.outcome, Attempt.error_class)
        )
        found = ", ".join(f"{o}{f' ({e})' if e else ''}: {n}" for o, e, n in rows.all())
    await engine.dispose()
    return found or "none"


def _report(
    times: list[float],
    total: int,
    duplicates: int,
    attempts: str,
    *,
    rate: float,
    burst: int,
    workers: int,
) -> Section:
    section = Section("ratelimit")
    section.notes += [
        f"{workers} worker processes, one provider at {rate:g}/s, burst {burst}",
        f"received {len(times)} of {total} ({duplicates} duplicates); attempts: {attempts}",
    ]
    if len(times) < 2:
        return section
    first = times[0]
    per_second = Counter(int(t - first) for t in times)
    last_second = max(per_second)
    section.notes.append(
        "per second: " + " ".join(str(per_second[s]) for s in range(last_second + 1))
    )
    # Overall: messages after the first, over the time from first to last arrival. The
    # burst is a head start the bucket grants once, so it is left out of the sustained rate.
    span = times[-1] - first
    sustained = (len(times) - burst) / span if span > 0 else float("nan")
    overall = len(times) / span if span > 0 else float("nan")
    busiest = busiest_window(times)
    section.add("overall", overall, "messages/s", against=rate)
    section.add("sustained", sustained, "messages/s", against=rate)
    section.add("busiest 1 s", busiest, "messages", against=rate + burst)
    verdict = "within" if busiest <= rate + burst else "ABOVE"
    section.notes.append(f"busiest 1 s: {busiest} ({verdict} rate + burst = {rate + burst:g})")
    section.details.update(duplicates=duplicates, received=len(times), total=total)
    return section
