"""`herald bench fanout`: one tenant's broadcast to a million recipients while others send.

Tenant A has `--recipients` recipients (1,000,000 by default), written by COPY straight into
the `recipients` table; B and C have a few each. For each of A's plans (`--a-plan`,
repeatable: one whose send rate the workers cannot reach, one whose rate is the
bottleneck) the bench starts one API process and `--workers` worker processes, then:

1. warms the streams' path up (a few notifications of each, sent before anything counts);
2. posts A's broadcast (`"to": {"all": true}`, normal priority, the sandbox provider), and
   from then on three streams of single notifications at `--stream-rate` each: A at high
   priority (a critical category), B at high priority, C at normal priority;
3. waits until the broadcast is materialised (its status leaves `accepted`: every message
   row is written), then lets it drain for `--drain-seconds`;
4. stops the streams, gives their last messages `GRACE` seconds, stops the processes and
   reads every figure from the rows' own timestamps.

Figures, each beside its target: the time from the broadcast's accept to its
`dispatched_at` and the rows written per second over it (divided by `copy_recipients`, the
seed's own COPY rate, a ceiling of this run); the broadcast's messages sent per second in
the drain window (divided by the `pg_claim` ceiling, and by A's send rate); p50/p99
accept→sent (`notifications.created_at` → `messages.sent_at`) of each stream's
notifications accepted while the broadcast was still being delivered, a message not sent
by the end counting as infinitely late; and the peak RSS of every process of the run (the
API, each worker, their render processes), sampled from /proc (bench/memory.py).

`--audience list` sends the broadcast as notifications of 1,000 recipients by id instead
(what Herald could do before it had a broadcast audience): the same figures, measured on
that path.

A run leaves nothing queued: the jobs of undelivered messages are withdrawn from Redis
once the workers have stopped, and between two plans the send tables are emptied (the
bench's database holds nothing else).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import asyncpg
import click
import httpx

from app.ids import uuid7s
from app.seed import create_tenant_with_key
from app.settings import Settings
from app.tenants.plans import limits_for
from bench.common import (
    free_port,
    herald,
    percentile,
    plain_url,
    running,
    service_env,
    wait_ready,
    withdraw_leftovers,
)
from bench.memory import MemoryWatch
from bench.report import CEILINGS, Progress, Section, Target

Audience = Literal["all", "list"]

MODE = "test"  # test keys deliver to the sandbox provider
SEED_CHUNK = 50_000  # recipient rows per COPY
LOCALES = ("en", "fr", "de", "es", "pt-BR", None, "en-GB", "fr-CA")
STREAM_RECIPIENTS = 10
WARM_UP = 3  # notifications per stream sent (and waited for) before the measured run
WARM_UP_SECONDS = 120.0
GRACE = 10.0  # seconds the streams' last messages get once the drain window closes
LIST_BATCH = 1_000  # recipients per notification of the list audience (the API's most)
LIST_SENDERS = 4  # concurrent requests posting the list audience

MATERIALISE_SECONDS = Target(60.0)
MATERIALISE_SHARE = Target(0.15, most=False, of_ratio=True)
PEAK_RSS_MB = Target(300.0)
P99 = {"high": Target(0.25), "normal": Target(2.0)}  # accept→sent, by the stream's priority


@dataclass(frozen=True)
class Options:
    recipients: int
    plans: tuple[str, ...]
    workers: int  # `herald worker --queues high,normal,low`, as fly.toml deploys them
    high_workers: int  # more, of the high queue alone (`herald worker --queues high`)
    drain_seconds: float
    stream_rate: float
    audience: Audience
    timeout: float  # seconds the broadcast may take to be materialised


@dataclass(frozen=True)
class Tenant:
    name: str
    id: uuid.UUID
    secret: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secret}"}


@dataclass(frozen=True)
class Stream:
    name: str
    tenant: Tenant
    category: str
    priority: str
    recipients: tuple[str, ...]

    def body(self, n: int) -> dict[str, Any]:
        return {
            "template": "code",
            "to": [self.recipients[n % len(self.recipients)]],
            "channels": ["email"],
            "category": self.category,
            "priority": self.priority,
            "data": {"code": f"{n:06d}"},
        }


def stages(options: Options) -> int:
    """The progress bar's stages of a run (the ceilings' not included)."""
    return 2 + 4 * len(options.plans)


# --- seeding --------------------------------------------------------------------------------

_SEED_COLUMNS = ("id", "tenant_id", "mode", "external_id", "email", "locale")


def recipient_rows(tenant_id: uuid.UUID, first: int, count: int) -> list[tuple[object, ...]]:
    """Recipients `user-<n>` with an e-mail address and, mostly, a locale."""
    ids = uuid7s(count)
    return [
        (
            ids[i],
            tenant_id,
            MODE,
            f"user-{n}",
            f"user-{n}@example.com",
            LOCALES[n % len(LOCALES)],
        )
        for i, n in enumerate(range(first, first + count))
    ]


async def seed_recipients(
    database_url: str,
    tenant_id: uuid.UUID,
    count: int,
    tick: Callable[[float, float], None] = lambda done, total: None,
) -> float:
    """COPY `count` recipients of the tenant into `recipients`, in chunks of SEED_CHUNK
    rows (one transaction each); the seconds spent in COPY, the rows' making left out."""
    connection = await asyncpg.connect(plain_url(database_url))
    spent = 0.0
    try:
        for first in range(0, count, SEED_CHUNK):
            rows = recipient_rows(tenant_id, first, min(SEED_CHUNK, count - first))
            began = time.perf_counter()
            await connection.copy_records_to_table(
                "recipients", records=rows, columns=_SEED_COLUMNS
            )
            spent += time.perf_counter() - began
            tick(first + len(rows), count)
        # As autovacuum would after a large import: the planner knows the table's size.
        await connection.execute("VACUUM (ANALYZE) recipients")
    finally:
        await connection.close()
    return spent


def _tenants(database_url: str, plan: str) -> dict[str, Tenant]:
    found = {}
    for name, tenant_plan in (("A", plan), ("B", "enterprise"), ("C", "enterprise")):
        tenant_id, secret = asyncio.run(
            create_tenant_with_key(database_url, f"bench fanout {name}", MODE, plan=tenant_plan)
        )
        found[name] = Tenant(name, tenant_id, secret)
    return found


_NEWSLETTER = {
    "name": "Newsletter",
    "content": {
        "email": {"subject": "Issue {{ issue }}", "text": "Hello, issue {{ issue }} is out."}
    },
    "locales": {
        "fr": {"email": {"subject": "Numéro {{ issue }}", "text": "Le numéro {{ issue }}."}},
        "de": {"email": {"subject": "Ausgabe {{ issue }}", "text": "Ausgabe {{ issue }} ist da."}},
        "es": {"email": {"subject": "Número {{ issue }}", "text": "Ya salió el {{ issue }}."}},
        "pt-BR": {"email": {"subject": "Edição {{ issue }}", "text": "Saiu a {{ issue }}."}},
    },
}
_CODE = {
    "name": "Code",
    "content": {"email": {"subject": "Your code", "text": "Your code is {{ code }}."}},
}


def _prepare(base_url: str, tenants: dict[str, Tenant]) -> None:
    """Templates, A's and B's critical category, B's and C's recipients, through the API."""
    for tenant in tenants.values():
        with httpx.Client(base_url=base_url, headers=tenant.headers, timeout=60) as client:
            client.put("/v1/templates/code", json=_CODE).raise_for_status()
            if tenant.name in ("A", "B"):
                category = {"name": "One-time codes", "critical": True}
                client.put("/v1/categories/otp", json=category).raise_for_status()
            if tenant.name == "A":
                client.put("/v1/templates/newsletter", json=_NEWSLETTER).raise_for_status()
            else:
                prefix = tenant.name.lower()
                batch = [
                    {"external_id": f"{prefix}-{i}", "email": f"{prefix}-{i}@example.com"}
                    for i in range(STREAM_RECIPIENTS)
                ]
                response = client.post("/v1/recipients/batch", json={"recipients": batch})
                response.raise_for_status()


def _streams(tenants: dict[str, Tenant]) -> list[Stream]:
    def ids(prefix: str) -> tuple[str, ...]:
        return tuple(f"{prefix}-{i}" for i in range(STREAM_RECIPIENTS))

    return [
        Stream("A high", tenants["A"], "otp", "high", ids("user")),
        Stream("B high", tenants["B"], "otp", "high", ids("b")),
        Stream("C normal", tenants["C"], "transactional", "normal", ids("c")),
    ]


# --- the streams ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Accepted:
    notification_id: uuid.UUID
    post_seconds: float  # the POST's round trip, as the client saw it


@dataclass
class Streams:
    """Each stream's notifications posted at `rate` per second on a fixed schedule (a slow
    answer does not delay the next request), from a thread and event loop of their own."""

    base_url: str
    streams: list[Stream]
    rate: float
    accepted: dict[str, list[Accepted]] = field(default_factory=dict)
    refused: dict[str, list[str]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        for stream in self.streams:
            self.accepted[stream.name] = []
            self.refused[stream.name] = []
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    async def _main(self) -> None:
        async with httpx.AsyncClient(base_url=self.base_url, timeout=60) as client:
            await asyncio.gather(*(self._run(client, stream) for stream in self.streams))

    async def _run(self, client: httpx.AsyncClient, stream: Stream) -> None:
        began, n = time.monotonic(), 0
        pending: set[asyncio.Task[None]] = set()
        while not self._stop.is_set():
            await asyncio.sleep(max(0.0, began + n / self.rate - time.monotonic()))
            if self._stop.is_set():
                break
            task = asyncio.create_task(self._post(client, stream, n))
            pending.add(task)
            task.add_done_callback(pending.discard)
            n += 1
        await asyncio.gather(*pending)

    async def _post(self, client: httpx.AsyncClient, stream: Stream, n: int) -> None:
        began = time.perf_counter()
        try:
            answer = await client.post(
                "/v1/notifications", json=stream.body(n), headers=stream.tenant.headers
            )
        except httpx.HTTPError as error:
            self.refused[stream.name].append(type(error).__name__)
            return
        if answer.status_code != 202:
            self.refused[stream.name].append(f"{answer.status_code} {answer.text[:200]}")
            return
        seconds = time.perf_counter() - began
        self.accepted[stream.name].append(Accepted(uuid.UUID(answer.json()["id"]), seconds))

    def ids(self) -> list[uuid.UUID]:
        return [a.notification_id for found in self.accepted.values() for a in found]


def _warm_up(base_url: str, database_url: str, streams: list[Stream]) -> None:
    """A few notifications of each stream, waited for: the workers' start (imports, render
    processes, first connections) is not what is measured."""
    ids = []
    with httpx.Client(base_url=base_url, timeout=60) as client:
        for stream in streams:
            for n in range(WARM_UP):
                answer = client.post(
                    "/v1/notifications", json=stream.body(n), headers=stream.tenant.headers
                )
                answer.raise_for_status()
                ids.append(uuid.UUID(answer.json()["id"]))
    deadline = time.monotonic() + WARM_UP_SECONDS
    while asyncio.run(_sent(database_url, ids)) < len(ids):
        if time.monotonic() > deadline:
            raise click.ClickException("fanout: the warm-up notifications were not sent")
        time.sleep(0.25)


# --- the broadcast ----------------------------------------------------------------------------

_BROADCAST = {
    "template": "newsletter",
    "channels": ["email"],
    "category": "marketing",
    "priority": "normal",
    "data": {"issue": 1},
}


def _broadcast(
    base_url: str, tenant: Tenant, audience: Audience, recipients: int
) -> list[uuid.UUID]:
    """Post A's broadcast: one notification to everyone, or (`list`) notifications of
    LIST_BATCH recipients by id. Their ids."""
    if audience == "all":
        body = {**_BROADCAST, "to": {"all": True}}
        answer = httpx.post(
            f"{base_url}/v1/notifications", json=body, headers=tenant.headers, timeout=60
        )
        if answer.status_code != 202:
            raise click.ClickException(
                f'fanout: POST /v1/notifications with "to": {{"all": true}} answered '
                f"{answer.status_code}: {answer.text[:300]}\n(a Herald without the broadcast "
                "audience refuses it: run with --audience list)"
            )
        return [uuid.UUID(answer.json()["id"])]
    return asyncio.run(_post_list(base_url, tenant, recipients))


async def _post_list(base_url: str, tenant: Tenant, recipients: int) -> list[uuid.UUID]:
    starts = iter(range(0, recipients, LIST_BATCH))
    found: dict[int, uuid.UUID] = {}

    async def sender(client: httpx.AsyncClient) -> None:
        for start in starts:
            to = [f"user-{n}" for n in range(start, min(recipients, start + LIST_BATCH))]
            answer = await client.post("/v1/notifications", json={**_BROADCAST, "to": to})
            answer.raise_for_status()
            found[start] = uuid.UUID(answer.json()["id"])

    async with httpx.AsyncClient(base_url=base_url, headers=tenant.headers, timeout=60) as client:
        await asyncio.gather(*(sender(client) for _ in range(LIST_SENDERS)))
    return [found[start] for start in sorted(found)]


async def _sent(database_url: str, notification_ids: list[uuid.UUID]) -> int:
    connection = await asyncpg.connect(plain_url(database_url))
    try:
        found = await connection.fetchval(
            "SELECT count(*) FROM messages WHERE notification_id = ANY($1::uuid[])"
            " AND sent_at IS NOT NULL",
            notification_ids,
        )
        return int(found)
    finally:
        await connection.close()


async def _accepted(database_url: str, notification_ids: list[uuid.UUID]) -> int:
    """How many of the notifications are still `accepted` (not materialised yet)."""
    connection = await asyncpg.connect(plain_url(database_url))
    try:
        found = await connection.fetchval(
            "SELECT count(*) FROM notifications WHERE id = ANY($1::uuid[]) AND status = 'accepted'",
            notification_ids,
        )
        return int(found)
    finally:
        await connection.close()


def _wait_materialised(
    database_url: str, ids: list[uuid.UUID], timeout: float, progress: Progress
) -> bool:
    """Wait until no notification of the broadcast is `accepted` (or `timeout` passes)."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if asyncio.run(_accepted(database_url, ids)) == 0:
            return True
        progress.update(time.monotonic() - began, timeout)
        time.sleep(0.5)
    return False


def _wait_streams_sent(database_url: str, ids: list[uuid.UUID], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and asyncio.run(_sent(database_url, ids)) < len(ids):
        time.sleep(0.25)


# --- one run ----------------------------------------------------------------------------------


@dataclass
class Run:
    """What one plan's run did, in wall-clock seconds (time.time())."""

    plan: str
    broadcast: list[uuid.UUID]
    drain_began: float
    drain_ended: float
    streams: Streams
    memory: MemoryWatch
    loads: tuple[float, float]  # the 1-minute load average at the broadcast and at the end
    withdrawn: int = 0


def shared_queues(options: Options) -> str:
    """The queues of `--workers`: the bulk ones alone when a high lane of its own runs beside
    them (fly.toml's `worker` and `priority` groups), else all three."""
    return "normal,low" if options.high_workers else "high,normal,low"


def _run_plan(
    settings: Settings,
    progress: Progress,
    options: Options,
    tenants: dict[str, Tenant],
    plan: str,
) -> Run:
    assert settings.database_url is not None and settings.redis_url is not None
    database_url = settings.database_url
    asyncio.run(_set_plan(database_url, tenants["A"].id, plan))
    label = f"fanout (A on {plan})"
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = service_env(settings)
    streams = _streams(tenants)
    progress.stage(f"{label}: starting the API and {options.workers} worker(s), warm-up")
    workers = [herald("worker", "--queues", shared_queues(options)) for _ in range(options.workers)]
    workers += [herald("worker", "--queues", "high") for _ in range(options.high_workers)]
    withdrawn = 0
    try:
        with (
            running([herald("api", "--port", str(port))], env) as api,
            running(workers, env) as started,
        ):
            roots = {"api": api[0].pid} | {
                f"{'worker' if n < options.workers else 'high-worker'}-{n + 1}": p.pid
                for n, p in enumerate(started)
            }
            memory = MemoryWatch(roots).start()
            try:
                wait_ready(base_url)
                _warm_up(base_url, database_url, streams)
                memory.mark()
                load = os.getloadavg()[0]
                progress.stage(f"{label}: broadcast to {options.recipients:,} recipients")
                sending = Streams(base_url, streams, options.stream_rate)
                broadcast = _broadcast(base_url, tenants["A"], options.audience, options.recipients)
                sending.start()
                try:
                    # Whether it was is read from the rows afterwards.
                    _wait_materialised(database_url, broadcast, options.timeout, progress)
                    progress.stage(f"{label}: draining for {options.drain_seconds:g} s")
                    drain_began = time.time()
                    while (elapsed := time.time() - drain_began) < options.drain_seconds:
                        progress.update(elapsed, options.drain_seconds)
                        time.sleep(min(0.5, options.drain_seconds - elapsed))
                finally:
                    sending.stop()
                drain_ended = time.time()
                loads = (load, os.getloadavg()[0])
                progress.stage(f"{label}: the streams' last messages, stopping")
                _wait_streams_sent(database_url, sending.ids(), GRACE)
            finally:
                memory.stop()
    finally:
        # Once the workers have stopped (giving back what they held as jobs), and also
        # when the run failed or was stopped: its database still exists to tell its jobs.
        withdrawn = withdraw_leftovers(database_url, settings.redis_url)
    return Run(plan, broadcast, drain_began, drain_ended, sending, memory, loads, withdrawn)


async def _set_plan(database_url: str, tenant_id: uuid.UUID, plan: str) -> None:
    connection = await asyncpg.connect(plain_url(database_url))
    try:
        await connection.execute("UPDATE tenants SET plan = $1 WHERE id = $2", plan, tenant_id)
    finally:
        await connection.close()


# The bench's database holds only its own tenants: emptying the send tables between two
# plans is quicker than deleting a million messages row by row.
_RESET = "TRUNCATE notifications, renders, messages, attempts"
_ANALYZE = "ANALYZE notifications, renders, messages, attempts"


async def _reset(database_url: str) -> None:
    connection = await asyncpg.connect(plain_url(database_url))
    try:
        await connection.execute(_RESET)
        await connection.execute(_ANALYZE)
    finally:
        await connection.close()


# --- reading the figures ----------------------------------------------------------------------


@dataclass(frozen=True)
class Broadcast:
    """The broadcast as its rows tell it; times in seconds from its accept."""

    accepted_at: datetime
    materialised: float | None  # last dispatched_at; None while one is still accepted
    by_status: dict[str, int]
    expected: int
    sent_per_second: dict[int, int]
    last_sent: float | None
    sent_while_materialising: int
    sent_in_drain: int

    @property
    def written(self) -> int:
        return sum(self.by_status.values())

    @property
    def unsent(self) -> int:
        return sum(n for status, n in self.by_status.items() if status in _WAITING)


_WAITING = ("queued", "sending", "retrying")


async def _read_broadcast(
    database_url: str, run: Run, tenant_id: uuid.UUID, audience: Audience, recipients: int
) -> Broadcast:
    connection = await asyncpg.connect(plain_url(database_url))
    ids = run.broadcast
    try:
        head = await connection.fetchrow(
            "SELECT min(created_at) AS accepted, max(dispatched_at) AS dispatched,"
            " count(*) FILTER (WHERE status = 'accepted') AS pending"
            " FROM notifications WHERE id = ANY($1::uuid[])",
            ids,
        )
        accepted: datetime = head["accepted"]
        materialised = None
        if head["pending"] == 0 and head["dispatched"] is not None:
            materialised = (head["dispatched"] - accepted).total_seconds()
        by_status = {
            r["status"]: int(r["count"])
            for r in await connection.fetch(
                "SELECT status, count(*) FROM messages WHERE notification_id = ANY($1::uuid[])"
                " GROUP BY status",
                ids,
            )
        }
        per_second = {
            int(r["second"]): int(r["count"])
            for r in await connection.fetch(
                "SELECT floor(extract(epoch FROM sent_at - $2))::int AS second, count(*)"
                " FROM messages WHERE notification_id = ANY($1::uuid[]) AND sent_at IS NOT NULL"
                " GROUP BY 1",
                ids,
                accepted,
            )
        }
        last = await connection.fetchval(
            "SELECT max(sent_at) FROM messages WHERE notification_id = ANY($1::uuid[])", ids
        )
        drain_began = datetime.fromtimestamp(run.drain_began, UTC)
        drain_ended = datetime.fromtimestamp(run.drain_ended, UTC)
        windows = await connection.fetchrow(
            "SELECT count(*) FILTER (WHERE sent_at < $2) AS before,"
            " count(*) FILTER (WHERE sent_at >= $2 AND sent_at < $3) AS during"
            " FROM messages WHERE notification_id = ANY($1::uuid[]) AND sent_at IS NOT NULL",
            ids,
            drain_began,
            drain_ended,
        )
        if audience == "all":
            expected = int(
                await connection.fetchval(
                    "SELECT count(*) FROM recipients WHERE tenant_id = $1 AND mode = $2"
                    " AND erased_at IS NULL",
                    tenant_id,
                    MODE,
                )
            )
        else:
            expected = recipients
    finally:
        await connection.close()
    return Broadcast(
        accepted_at=accepted,
        materialised=materialised,
        by_status=by_status,
        expected=expected,
        sent_per_second=per_second,
        last_sent=(last - accepted).total_seconds() if last is not None else None,
        sent_while_materialising=int(windows["before"]),
        sent_in_drain=int(windows["during"]),
    )


INF = float("inf")


@dataclass(frozen=True)
class Sent:
    """One stream notification: accepted (seconds from the broadcast's accept), then its
    accept→dispatched and accept→sent in seconds (inf: not within the run)."""

    accepted: float
    dispatched: float
    sent: float


@dataclass(frozen=True)
class StreamTimes:
    """One stream's notifications, in the order they were accepted."""

    items: list[Sent]

    @property
    def latency(self) -> list[float]:
        return [item.sent for item in self.items]

    @property
    def unsent(self) -> int:
        return sum(1 for item in self.items if item.sent == INF)

    @property
    def undispatched(self) -> int:
        return sum(1 for item in self.items if item.dispatched == INF)

    def during(self, end: float | None) -> StreamTimes:
        """Those accepted before `end` (None: all)."""
        if end is None:
            return self
        return StreamTimes([item for item in self.items if item.accepted < end])

    def split(self, at: float) -> tuple[StreamTimes, StreamTimes]:
        """(accepted before `at`, accepted at or after it)."""
        after = [item for item in self.items if item.accepted >= at]
        return self.during(at), StreamTimes(after)


async def _read_stream(database_url: str, ids: list[uuid.UUID], origin: datetime) -> StreamTimes:
    connection = await asyncpg.connect(plain_url(database_url))
    try:
        rows = await connection.fetch(
            "SELECT extract(epoch FROM n.created_at - $2)::float8 AS accepted,"
            " extract(epoch FROM n.dispatched_at - n.created_at)::float8 AS dispatched,"
            " extract(epoch FROM m.sent_at - n.created_at)::float8 AS sent"
            " FROM notifications n LEFT JOIN messages m ON m.notification_id = n.id"
            " WHERE n.id = ANY($1::uuid[]) ORDER BY n.created_at",
            ids,
            origin,
        )
    finally:
        await connection.close()

    def seconds(value: float | None) -> float:
        return INF if value is None else float(value)

    return StreamTimes(
        [Sent(float(r["accepted"]), seconds(r["dispatched"]), seconds(r["sent"])) for r in rows]
    )


def sent_line(per_second: dict[int, int], most: int = 120) -> str:
    """Messages sent in each second from the broadcast's accept, or in each stretch of a
    few seconds when there would be more than `most` figures."""
    seconds = max(per_second, default=-1) + 1
    width = max(1, -(-seconds // most))
    counts = [
        sum(per_second.get(s, 0) for s in range(first, first + width))
        for first in range(0, seconds, width)
    ]
    unit = "second" if width == 1 else f"{width} s"
    return f"sent per {unit}: " + " ".join(str(n) for n in counts)


def _milliseconds(values: list[float]) -> str:
    """p50 and p99 (and the count) of seconds, in ms."""
    if not values:
        return "none"
    p50, p99 = percentile(values, 0.5), percentile(values, 0.99)
    return f"p50 {p50 * 1000:,.0f} ms, p99 {p99 * 1000:,.0f} ms ({len(values)})"


def describe(
    run: Run,
    broadcast: Broadcast,
    streams: dict[str, StreamTimes],
    options: Options,
    section: Section,
) -> None:
    """The figures and notes of one plan's run."""
    limits = limits_for(run.plan)
    rate = limits.send_rate
    materialised = broadcast.materialised
    section.add(
        "materialise time",
        float("nan") if materialised is None else materialised,
        "s",
        target=MATERIALISE_SECONDS,
    )
    section.add(
        "materialise rate",
        float("nan") if not materialised else broadcast.written / materialised,
        "rows/s",
        ceiling="copy_recipients",
        target=MATERIALISE_SHARE,
    )
    origin = broadcast.accepted_at.timestamp()
    drain_from, drain_to = run.drain_began - origin, run.drain_ended - origin
    if broadcast.unsent == 0 and broadcast.last_sent is not None:
        drain_to = min(drain_to, broadcast.last_sent)  # all delivered before the window closed
    span = drain_to - drain_from
    delivered = broadcast.sent_in_drain / span if span > 0 else float("nan")
    section.add("delivered", delivered, "messages/s", ceiling="pg_claim")
    section.add("delivered, of A's send rate", delivered, "messages/s", against=rate)
    # While A's broadcast was still being delivered: a stream's notification accepted after
    # its last message went out met no broadcast at all.
    end = broadcast.last_sent if broadcast.unsent == 0 else None
    for name, times in streams.items():
        measured = times.during(end)
        target = P99[name.rsplit(" ", 1)[-1]]  # streams are named "<tenant> <priority>"
        section.add(f"{name} accept→sent p50", percentile(measured.latency, 0.5), "s")
        section.add(
            f"{name} accept→sent p99", percentile(measured.latency, 0.99), "s", target=target
        )
        section.add(f"{name} not sent", float(measured.unsent), "notifications")
    processes = list(run.memory.processes.values())

    def peak(kept: Callable[[Any], bool]) -> float:
        return max((p.peak_mb for p in processes if kept(p)), default=float("nan"))

    section.add("peak RSS, API", peak(lambda p: p.label == "api"), "MB", target=PEAK_RSS_MB)
    section.add(
        "peak RSS, workers",
        peak(lambda p: p.kind == "root" and p.label != "api"),
        "MB",
        target=PEAK_RSS_MB,
    )
    section.add(
        "peak RSS, render processes", peak(lambda p: p.kind == "render"), "MB", target=PEAK_RSS_MB
    )
    section.add("peak RSS, any process", peak(lambda p: True), "MB", target=PEAK_RSS_MB)
    _notes(run, broadcast, streams, options, section, (drain_from, drain_to, end))


def _notes(
    run: Run,
    broadcast: Broadcast,
    streams: dict[str, StreamTimes],
    options: Options,
    section: Section,
    window: tuple[float, float, float | None],
) -> None:
    limits = limits_for(run.plan)
    drain_from, drain_to, end = window
    notes = section.notes
    high = f" and {options.high_workers} of the high queue alone" if options.high_workers else ""
    notes.append(
        f"A on plan {run.plan!r}: send rate {limits.send_rate:,.0f}/s, burst "
        f"{limits.send_burst:,}; B and C on 'enterprise'. {options.workers} worker process(es) "
        f"of the queues {shared_queues(options).replace(',', ', ')}{high}; 1 API process; "
        "sandbox e-mail provider"
    )
    notes.append(
        f"machine: {os.cpu_count()} CPUs, 1-minute load average {run.loads[0]:.1f} at the "
        f"broadcast, {run.loads[1]:.1f} at the end of the drain (above the CPUs: other work "
        "competed with the run)"
    )
    notes.append(
        f"broadcast: audience {options.audience!r} ({len(run.broadcast)} notification(s)), "
        f"{broadcast.expected:,} recipients; streams: {options.stream_rate:g}/s each"
    )
    statuses = ", ".join(f"{s} {n:,}" for s, n in sorted(broadcast.by_status.items()))
    if broadcast.materialised is None:
        notes.append(
            f"NOT MATERIALISED within {options.timeout:g} s: {broadcast.written:,} rows "
            f"written ({statuses})"
        )
    else:
        notes.append(
            f"materialised at {broadcast.materialised:.1f} s: {broadcast.written:,} message "
            f"rows of {broadcast.expected:,} expected; at the end: {statuses}"
        )
    if broadcast.written != broadcast.expected:
        notes.append(f"ROWS WRITTEN {broadcast.written:,} ≠ RECIPIENTS {broadcast.expected:,}")
    notes.append(
        f"delivered {broadcast.sent_while_materialising:,} before the drain window and "
        f"{broadcast.sent_in_drain:,} in it ({drain_from:.1f} s to {drain_to:.1f} s); "
        f"{broadcast.unsent:,} not sent when the run stopped ({run.withdrawn} jobs withdrawn)"
    )
    span = drain_to - drain_from
    share = broadcast.sent_in_drain / span / limits.send_rate if span > 0 else float("nan")
    limit = (
        "A's send bucket was the limit"
        if share >= 0.9
        else "not A's send bucket: something else held it back (the workers, the pacing)"
    )
    notes.append(f"drain at {share:.0%} of A's send rate: {limit}")
    last = max(broadcast.sent_per_second, default=-1)
    notes.append(sent_line(broadcast.sent_per_second))
    if end is not None:
        notes.append(
            f"the broadcast was delivered at {end:.1f} s: stream notifications accepted after "
            "it are left out of the stream figures"
        )
    at = broadcast.materialised
    for name, times in streams.items():
        accepted = run.streams.accepted[name]
        refused = run.streams.refused[name]
        posts = [a.post_seconds for a in accepted]
        notes.append(
            f"{name}: {len(accepted)} accepted ({len(refused)} refused"
            + (f", first: {refused[0]}" if refused else "")
            + f"), POST p99 {percentile(posts, 0.99) * 1000:,.0f} ms"
        )
        counted = times.during(end)
        dispatched = [i.dispatched for i in counted.items if i.dispatched != INF]
        sent = [i.sent for i in counted.items if i.sent != INF]
        notes.append(
            f"  of the {len(counted.items)} counted: accept→dispatched {_milliseconds(dispatched)}"
            f", {counted.undispatched} not dispatched; accept→sent {_milliseconds(sent)}, "
            f"{counted.unsent} not sent"
        )
        if at is not None:
            before, after = counted.split(at)
            notes.append(
                f"  accepted while materialising: {_milliseconds(before.latency)}; "
                f"after: {_milliseconds(after.latency)}"
            )
    notes.append("memory (MB): RSS at the broadcast → peak → at the end, per process")
    for process in sorted(run.memory.processes.values(), key=lambda p: p.label):
        marked = "-" if process.marked_mb is None else f"{process.marked_mb:.0f}"
        notes.append(
            f"  {process.label:<28} {marked:>5} → {process.peak_mb:5.0f} → {process.last_mb:5.0f}"
        )
    section.details.update(
        plan=run.plan,
        materialised_s=broadcast.materialised,
        written=broadcast.written,
        expected=broadcast.expected,
        by_status=broadcast.by_status,
        sent_per_second=[broadcast.sent_per_second.get(s, 0) for s in range(last + 1)],
        memory={
            p.label: {"at_broadcast": p.marked_mb, "peak": p.peak_mb, "end": p.last_mb}
            for p in run.memory.processes.values()
        },
    )


def _measure(database_url: str, run: Run, tenants: dict[str, Tenant], options: Options) -> Section:
    broadcast = asyncio.run(
        _read_broadcast(database_url, run, tenants["A"].id, options.audience, options.recipients)
    )
    streams = {
        name: asyncio.run(
            _read_stream(database_url, [a.notification_id for a in accepted], broadcast.accepted_at)
        )
        for name, accepted in run.streams.accepted.items()
    }
    section = Section(f"fanout (A on {run.plan})")
    describe(run, broadcast, streams, options, section)
    return section


# --- the bench --------------------------------------------------------------------------------


def run(settings: Settings, progress: Progress, options: Options) -> list[Section]:
    """Seed, then one run per plan of A: the seed's COPY rate as a ceiling, and a section
    per run."""
    assert settings.database_url is not None
    database_url = settings.database_url
    tenants = _tenants(database_url, options.plans[0])
    progress.stage(f"fanout: COPY of {options.recipients:,} recipients of tenant A")
    copy_seconds = asyncio.run(
        seed_recipients(database_url, tenants["A"].id, options.recipients, progress.update)
    )
    ceiling = Section(CEILINGS)
    ceiling.add("copy_recipients", options.recipients / copy_seconds, "rows/s")
    ceiling.notes.append(
        f"copy_recipients: COPY of {options.recipients:,} recipient rows into the "
        f"`recipients` table itself (logged, with its indexes), {SEED_CHUNK:,} rows per "
        "statement and transaction: the seed of tenant A (divides fanout's materialise rate)"
    )
    progress.stage("fanout: templates, categories, B's and C's recipients")
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    with running([herald("api", "--port", str(port))], service_env(settings)):
        wait_ready(base_url)
        _prepare(base_url, tenants)
    sections = [ceiling]
    for n, plan in enumerate(options.plans):
        if n:
            asyncio.run(_reset(database_url))
        done = _run_plan(settings, progress, options, tenants, plan)
        sections.append(_measure(database_url, done, tenants, options))
    return sections
