"""`herald bench receipts`: SendGrid Event Webhook batches posted to one API process.

A live tenant gets a `sendgrid` provider config (through the API) whose webhook
verification key is a P-256 key made for the run, and `--messages` messages in status
`sent` (200,000 by default, 1,000 per notification), written by COPY. Then batches of
`--batch` events (1,000 by default), SendGrid's shape and signature (ECDSA P-256/SHA-256
over timestamp + raw body), go to `POST /webhooks/providers/{config id}`:

- offered load (the default): `--rate` batches per second for `--seconds`, posted on a
  fixed schedule (a slow answer does not delay the next batch), which says whether one
  process keeps up with what SendGrid would post;
- `--flood`: batches back to back from `--connections` connections for `--seconds`, which
  finds the most events per second the one process takes.

Each event has a new `sg_event_id`; 60 % are `delivered`, 25 % `open`, 10 % `click` and
5 % `bounce` (shuffled within each batch), each for a message drawn at random among the
seeded ones. The report: events accepted per second (divided by the `pg_copy` ceiling:
each event is a row written, as COPY writes rows), batches per second (divided by
`healthz`, the same single process answering nothing), batch latency p50/p95/p99, the
answers that were not 200, and in offered mode the share of the offered load taken. Then
it checks by SQL that nothing was lost nor taken twice: the config's `message_events` rows
are the events of the batches answered 200, each once, and every message is at the status
its events put it at (app/receipts/progress.py); one batch is posted again and must answer
200 with nothing new.
"""

from __future__ import annotations

import asyncio
import base64
import random
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg
import httpx
import msgspec
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from app.ids import uuid7s
from app.receipts.progress import advance
from app.seed import create_tenant_with_key
from app.settings import Settings
from bench.common import (
    free_port,
    herald,
    percentile,
    plain_url,
    retire_tenants,
    running,
    service_env,
    wait_ready,
    withdraw_leftovers,
)
from bench.report import Progress, Section, Target

API_PROCESSES = 1  # the figure is what one process takes; healthz is measured alike
SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"
# SendGrid event types, in the share of a batch each takes.
MIX = (("delivered", 0.60), ("open", 0.25), ("click", 0.10), ("bounce", 0.05))
# The message status each event type stands for (app/receipts/progress.py ranks them).
STATUS_OF = {"delivered": "delivered", "open": "opened", "click": "clicked", "bounce": "bounced"}
MESSAGES_PER_NOTIFICATION = 1_000
SEED_CHUNK = 50_000  # message rows per COPY
TIMEOUT = 120.0  # seconds a batch may take before it counts as not answered
NONE = Target(0.0)  # a count that must be zero


@dataclass(frozen=True)
class Options:
    messages: int
    batch: int
    rate: float  # batches per second offered (ignored with flood)
    seconds: int
    flood: bool
    connections: int  # flood: batches in flight at once


# --- signing --------------------------------------------------------------------------------


def signed_content(timestamp: str, body: bytes) -> bytes:
    """What SendGrid signs: the timestamp header's value, then the raw body, no separator."""
    return timestamp.encode() + body


class Signer:
    """The key SendGrid's Event Webhook signs with; Herald holds its public half."""

    def __init__(self, key: ec.EllipticCurvePrivateKey | None = None) -> None:
        self.key = key or ec.generate_private_key(ec.SECP256R1())

    @property
    def public_key(self) -> str:
        """The verification key as SendGrid shows it: base64 of DER SubjectPublicKeyInfo."""
        der = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return base64.b64encode(der).decode()

    def headers(self, body: bytes, timestamp: int) -> dict[str, str]:
        stamp = str(timestamp)
        signature = self.key.sign(signed_content(stamp, body), ec.ECDSA(hashes.SHA256()))
        return {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: base64.b64encode(signature).decode(),
            TIMESTAMP_HEADER: stamp,
        }


# --- batches --------------------------------------------------------------------------------


def kinds(size: int) -> list[str]:
    """`size` event types in MIX's shares (largest remainders), not yet shuffled."""
    counts = {kind: int(share * size) for kind, share in MIX}
    rest = sorted(MIX, key=lambda pair: pair[1] * size - counts[pair[0]], reverse=True)
    for kind, _ in rest[: size - sum(counts.values())]:
        counts[kind] += 1
    return [kind for kind, _ in MIX for _ in range(counts[kind])]


def address(n: int) -> str:
    return f"user-{n}@example.com"


@dataclass(frozen=True)
class Batch:
    body: bytes
    events: list[tuple[int, str]]  # (seeded message's index, event type), in body order


@dataclass
class Batches:
    """SendGrid-style batches over the seeded messages; every event a new `sg_event_id`."""

    messages: Sequence[uuid.UUID]
    size: int
    seed: int = 0
    made: int = 0  # events made so far
    _random: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)

    def next(self, now: int) -> Batch:
        """The next batch, its events stamped `now` (Unix seconds)."""
        types = kinds(self.size)
        self._random.shuffle(types)
        picks = [self._random.randrange(len(self.messages)) for _ in types]
        events = [self._event(n, kind, now) for n, kind in zip(picks, types, strict=True)]
        # SendGrid's body ends in CRLF, which is signed with the rest.
        body = msgspec.json.encode(events) + b"\r\n"
        return Batch(body, list(zip(picks, types, strict=True)))

    def _event(self, n: int, kind: str, now: int) -> dict[str, object]:
        self.made += 1
        message = self.messages[n]
        event: dict[str, object] = {
            "email": address(n),
            "timestamp": now,
            "event": kind,
            "sg_event_id": f"bench-{self.seed}-{self.made:012d}",
            "sg_message_id": f"{message.hex[:22]}.filterdrecv-bench-{n}.0",
            "smtp-id": f"<{message.hex[:22]}@ismtpd-bench.sendgrid.net>",
            "herald_message_id": str(message),
        }
        if kind in ("open", "click"):
            event["useragent"] = "Mozilla/5.0 (Windows NT 10.0; Win64; x64)"
            event["ip"] = "203.0.113.7"
        if kind == "click":
            event["url"] = "https://example.com/orders/1"
        if kind == "bounce":
            event.update(type="bounce", status="5.1.1", reason="550 5.1.1 No such user")
        return event


# --- the load ---------------------------------------------------------------------------------


class Counts(msgspec.Struct):
    """The route's answer to a verified request (other members, if any, ignored)."""

    received: int = 0
    new: int = 0


@dataclass(frozen=True)
class Answer:
    status: int  # 0: no answer (a connection error or the timeout)
    seconds: float  # from sending to the answer
    answered: float  # seconds from the run's start
    batch: Batch
    received: int = 0
    new: int = 0


async def _post(
    client: httpx.AsyncClient, path: str, batch: Batch, signer: Signer, began: float
) -> Answer:
    headers = signer.headers(batch.body, int(time.time()))
    start = time.perf_counter()
    try:
        response = await client.post(path, content=batch.body, headers=headers)
    except httpx.HTTPError:
        now = time.perf_counter()
        return Answer(0, now - start, now - began, batch)
    now = time.perf_counter()
    received = new = 0
    if response.status_code == 200:
        counts = msgspec.json.decode(response.content, type=Counts)
        received, new = counts.received, counts.new
    return Answer(response.status_code, now - start, now - began, batch, received, new)


async def offered(
    client: httpx.AsyncClient, path: str, batches: Batches, signer: Signer, options: Options
) -> tuple[list[Answer], float]:
    """`rate` batches a second on a fixed schedule; the answers and the seconds offered."""
    count = max(1, round(options.rate * options.seconds))
    began = time.perf_counter()
    posts = []
    for i in range(count):
        delay = began + i / options.rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        batch = batches.next(int(time.time()))
        posts.append(asyncio.create_task(_post(client, path, batch, signer, began)))
    return list(await asyncio.gather(*posts)), count / options.rate


async def flood(
    client: httpx.AsyncClient, path: str, batches: Batches, signer: Signer, options: Options
) -> list[Answer]:
    """Batches back to back from `connections` senders for `seconds`."""
    began = time.perf_counter()
    deadline = began + options.seconds
    answers: list[Answer] = []

    async def sender() -> None:
        while time.perf_counter() < deadline:
            batch = batches.next(int(time.time()))
            answers.append(await _post(client, path, batch, signer, began))

    await asyncio.gather(*(sender() for _ in range(options.connections)))
    return answers


# --- what it found ------------------------------------------------------------------------------


def expected_statuses(
    answers: Sequence[Answer], messages: Sequence[uuid.UUID]
) -> dict[uuid.UUID, str]:
    """Where the events of the batches answered 200 put their messages (all start `sent`);
    messages no such event named are left out."""
    found: dict[uuid.UUID, str] = {}
    for answer in answers:
        if answer.status != 200:
            continue
        for n, kind in answer.batch.events:
            message = messages[n]
            found[message] = advance(found.get(message, "sent"), STATUS_OF[kind])
    return found


@dataclass(frozen=True)
class Check:
    """What PostgreSQL holds after the run."""

    events: int  # the config's message_events rows
    distinct: int  # of them, distinct provider event ids
    unmatched: int  # of them, naming no message
    statuses: dict[str, int]  # the tenant's messages by status
    misplaced: int  # messages not at the status their events put them at


def summarise(
    answers: Sequence[Answer],
    options: Options,
    check: Check,
    *,
    span: float,
    offered_seconds: float | None,
    replay: Answer | None,
) -> Section:
    """The report's section: `span` is the seconds from the first post to the last answer
    (in offered mode, at least the schedule's length: answering each batch within its
    second is keeping up)."""
    ok = [a for a in answers if a.status == 200]
    events = sum(len(a.batch.events) for a in ok)
    expected = events
    span = max(span, offered_seconds or 0.0)
    rate = events / span if span > 0 else float("nan")
    latencies = [a.seconds * 1000 for a in ok]
    refused = len(answers) - len(ok)
    section = Section("receipts")
    section.add("events accepted", rate, "events/s", ceiling="pg_copy")
    if offered_seconds is not None:
        offered_rate = options.rate * options.batch
        section.add("events accepted, of offered", rate, "events/s", against=offered_rate)
    section.add(
        "batches accepted",
        len(ok) / span if span > 0 else float("nan"),
        "requests/s",
        ceiling="healthz",
    )
    for name, fraction in (("p50", 0.50), ("p95", 0.95), ("p99", 0.99)):
        section.add(f"batch latency {name}", percentile(latencies, fraction), "ms")
    section.add("batches not answered 200", float(refused), "requests", target=NONE)
    section.add(
        "events lost or taken twice",
        float(abs(check.events - expected) + check.events - check.distinct),
        "events",
        target=NONE,
    )
    section.add("messages at a wrong status", float(check.misplaced), "messages", target=NONE)
    statuses = Counter(a.status for a in answers)
    mode = (
        f"flood: {options.connections} connections, batches back to back"
        if offered_seconds is None
        else f"offered: {options.rate:g} batch(es)/s"
    )
    section.notes += [
        f"1 API process; {mode}, batches of {options.batch:,} events, {options.seconds} s; "
        f"{options.messages:,} messages seeded as sent",
        f"batches posted {len(answers):,}, answered "
        + ", ".join(f"{s or 'none'}: {c:,}" for s, c in sorted(statuses.items())),
        f"events in batches answered 200 {events:,}; the answers said new "
        f"{sum(a.new for a in ok):,} of received {sum(a.received for a in ok):,}",
        f"message_events rows {check.events:,} ({check.distinct:,} distinct event ids, "
        f"{check.unmatched:,} naming no message); expected {expected:,}",
        "messages by status: " + ", ".join(f"{s} {c:,}" for s, c in sorted(check.statuses.items())),
    ]
    if replay is not None:
        section.notes.append(
            f"a batch posted again: {replay.status or 'no answer'}, "
            f"received {replay.received:,}, new {replay.new:,} (expected 200, new 0)"
        )
    section.details = {
        "latency_ms_max": max(latencies) if latencies else None,
        "statuses": dict(check.statuses),
    }
    return section


# --- seeding ----------------------------------------------------------------------------------

# A tenant's notifications of MESSAGES_PER_NOTIFICATION e-mails each, dispatched and complete
# (so that nothing in Herald takes them up), in one statement.
_NOTIFICATIONS = """
INSERT INTO notifications (id, tenant_id, mode, request_hash, template_key, template_version,
                           category, channels, audience, data, priority, status,
                           dispatched_at, completed_at, created_at)
SELECT gen_random_uuid(), $1, 'live', 'bench', 'bench', 1, 'transactional', ARRAY['email'],
       '{}'::jsonb, '{}'::jsonb, 'normal', 'dispatched', now(), now(), now()
  FROM generate_series(1, $2)
RETURNING id
"""
_MESSAGE_COLUMNS = (
    "id",
    "notification_id",
    "tenant_id",
    "mode",
    "recipient_id",
    "channel",
    "address",
    "status",
    "attempts",
    "provider",
    "provider_message_id",
    "sent_at",
    "created_at",
    "updated_at",
)


def message_rows(
    tenant_id: uuid.UUID, notifications: Sequence[uuid.UUID], ids: Sequence[uuid.UUID], first: int
) -> list[tuple[object, ...]]:
    """Messages `first`… of the tenant (ids `ids`), sent by SendGrid to user-<n>@example.com."""
    now = datetime.now(UTC)
    return [
        (
            message_id,
            notifications[n // MESSAGES_PER_NOTIFICATION],
            tenant_id,
            "live",
            uuid.uuid4(),
            "email",
            address(n),
            "sent",
            1,
            "sendgrid",
            message_id.hex[:22],
            now,
            now,
            now,
        )
        for n, message_id in enumerate(ids, start=first)
    ]


async def seed_messages(database_url: str, tenant_id: uuid.UUID, count: int) -> list[uuid.UUID]:
    """`count` sent messages of the tenant (COPY); their ids, message n's at index n."""
    ids = uuid7s(count)
    connection = await asyncpg.connect(plain_url(database_url))
    try:
        notifications = [
            record["id"]
            for record in await connection.fetch(
                _NOTIFICATIONS, tenant_id, -(-count // MESSAGES_PER_NOTIFICATION)
            )
        ]
        for first in range(0, count, SEED_CHUNK):
            chunk = ids[first : first + SEED_CHUNK]
            await connection.copy_records_to_table(
                "messages",
                records=message_rows(tenant_id, notifications, chunk, first),
                columns=_MESSAGE_COLUMNS,
            )
        # As autovacuum would after a large import: the planner knows the tables' sizes.
        await connection.execute("VACUUM (ANALYZE) notifications, messages")
        return ids
    finally:
        await connection.close()


def create_config(base_url: str, secret: str, signer: Signer) -> uuid.UUID:
    """The tenant's SendGrid provider config, made through the API as a tenant would."""
    body = {
        "channel": "email",
        "provider": "sendgrid",
        "name": "SendGrid (bench)",
        "credentials": {"api_key": "SG.bench", "webhook_verification_key": signer.public_key},
        "options": {"from_email": "bench@example.com"},
    }
    headers = {"Authorization": f"Bearer {secret}"}
    response = httpx.post(f"{base_url}/v1/providers", json=body, headers=headers, timeout=60)
    if response.status_code != 201:
        raise RuntimeError(f"POST /v1/providers answered {response.status_code}: {response.text}")
    return uuid.UUID(response.json()["id"])


# --- the run ----------------------------------------------------------------------------------

_EVENTS = """
SELECT count(*) AS events, count(DISTINCT provider_event_id) AS distinct_ids,
       count(*) FILTER (WHERE message_id IS NULL) AS unmatched
  FROM message_events WHERE provider_config_id = $1
"""


async def check(
    database_url: str, config_id: uuid.UUID, tenant_id: uuid.UUID, expected: dict[uuid.UUID, str]
) -> Check:
    connection = await asyncpg.connect(plain_url(database_url))
    try:
        events = await connection.fetchrow(_EVENTS, config_id)
        rows = await connection.fetch(
            "SELECT id, status FROM messages WHERE tenant_id = $1", tenant_id
        )
    finally:
        await connection.close()
    statuses = Counter(row["status"] for row in rows)
    misplaced = sum(1 for row in rows if expected.get(row["id"], "sent") != row["status"])
    return Check(
        events["events"], events["distinct_ids"], events["unmatched"], dict(statuses), misplaced
    )


async def _drive(
    base_url: str,
    config_id: uuid.UUID,
    signer: Signer,
    messages: Sequence[uuid.UUID],
    options: Options,
) -> tuple[list[Answer], float, float | None, Answer | None]:
    """The load, then one of its batches posted again: answers, span, offered seconds, replay."""
    path = f"/webhooks/providers/{config_id}"
    batches = Batches(messages, options.batch)
    limits = httpx.Limits(max_connections=max(16, options.connections))
    async with httpx.AsyncClient(base_url=base_url, timeout=TIMEOUT, limits=limits) as client:
        began = time.perf_counter()
        offered_seconds: float | None = None
        if options.flood:
            answers = await flood(client, path, batches, signer, options)
        else:
            answers, offered_seconds = await offered(client, path, batches, signer, options)
        span = max((a.answered for a in answers), default=0.0)
        taken = [a for a in answers if a.status == 200]
        replay = None
        if taken:
            replay = await _post(client, path, taken[0].batch, signer, began)
    return answers, span, offered_seconds, replay


def run(settings: Settings, progress: Progress, options: Options) -> Section:
    assert settings.database_url is not None and settings.redis_url is not None
    database_url = settings.database_url
    progress.stage(f"receipts: {options.messages:,} sent messages by COPY")
    tenant_id, secret = asyncio.run(
        create_tenant_with_key(database_url, "bench receipts", "live", plan="enterprise")
    )
    seeding = time.perf_counter()
    messages = asyncio.run(seed_messages(database_url, tenant_id, options.messages))
    seeded = time.perf_counter() - seeding
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = herald("api", "--port", str(port), "--workers", str(API_PROCESSES))
    try:
        with running([command], service_env(settings)):
            progress.stage("receipts: starting the API, the SendGrid config")
            wait_ready(url)
            signer = Signer()
            config_id = create_config(url, secret, signer)
            how = "flood" if options.flood else f"{options.rate:g} batch(es)/s"
            progress.stage(f"receipts: batches of {options.batch:,}, {how}, {options.seconds} s")
            answers, span, offered_seconds, replay = asyncio.run(
                _drive(url, config_id, signer, messages, options)
            )
        progress.stage("receipts: checking message_events and statuses")
        expected = expected_statuses(answers, messages)
        found = asyncio.run(check(database_url, config_id, tenant_id, expected))
    finally:
        withdraw_leftovers(database_url, settings.redis_url)
        retire_tenants(database_url, tenant_id)
    section = summarise(
        answers, options, found, span=span, offered_seconds=offered_seconds, replay=replay
    )
    section.notes.append(
        f"seed: {options.messages:,} messages by COPY in {seeded:.1f} s "
        f"({options.messages / seeded:,.0f} rows/s, with their making)"
    )
    return section
