"""`herald bench dashboard`: how long each dashboard page takes with a large tenant.

A live tenant with a verified owner gets `--recipients` recipients (100,000 by default) and
`--messages` messages (1,000,000 by default, 1,000 per notification, over five templates),
written by COPY in the mix a working tenant has: most delivered or sent, some failed (the
dead-letter queue), skipped, queued, bounced, over e-mail, SMS and push and three providers,
spread over the last 30 days. The overview's rollups are kept by triggers on messages, the
COPY included, and folded as their cron would.

One `herald api` process serves the pages. The owner signs in through the sign-in form, and
each page (PAGES: every page of the dashboard, lists with and without filters, and each
kind of detail page, with ids taken from the seeded data) is fetched `--warm` times, then
`--requests` times in turn from one client over loopback. The report gives each page's
p50, p95 and slowest time, the target being a p95 under 150 ms; the ceiling beside them is
`/healthz` fetched the same way by the same client (the time of a request that does
nothing). A page answering anything but 200 fails the run.
"""

from __future__ import annotations

import asyncio
import random
import re
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx

from app.auth import accounts, keys
from app.auth.passwords import Passwords
from app.db import create_engine, session_factory
from app.ids import uuid7s
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
)
from bench.report import Progress, Section, Target

API_PROCESSES = 1
PASSWORD = secrets.token_urlsafe(18)  # the bench owner's, made for the run
MESSAGES_PER_NOTIFICATION = 1_000
SEED_CHUNK = 50_000
TARGET_MS = Target(150.0)
TEMPLATES = ("welcome", "receipt", "otp", "digest", "password-reset")
# (status, share, error class, skip reason): what a month of a working tenant looks like.
STATUS_MIX = (
    ("delivered", 0.62, None, None),
    ("sent", 0.18, None, None),
    ("opened", 0.06, None, None),
    ("failed", 0.04, "permanent", None),
    ("skipped", 0.05, None, "suppressed"),
    ("bounced", 0.02, None, None),
    ("queued", 0.02, None, None),
    ("retrying", 0.01, "transient", None),
)
CHANNELS = (("email", "sendgrid"), ("email", "ses"), ("sms", "twilio"), ("push", "fcm"))
TOKEN = re.compile(r'name="_csrf_token" value="([^"]+)"')


@dataclass(frozen=True)
class Options:
    messages: int
    recipients: int
    requests: int
    warm: int


@dataclass(frozen=True)
class Seeded:
    tenant_id: uuid.UUID
    email: str
    message_id: uuid.UUID
    failed_message_id: uuid.UUID
    notification_id: uuid.UUID
    recipient_id: uuid.UUID
    recipient_external_id: str


def pages(seeded: Seeded) -> list[tuple[str, str]]:
    """(name, path) of every page measured."""
    return [
        ("overview", "/overview"),
        ("delivery log", "/messages"),
        ("log: failed", "/messages?status=failed"),
        ("log: sms", "/messages?channel=sms"),
        ("log: template", "/messages?template=otp"),
        ("log: recipient", f"/messages?recipient={seeded.recipient_external_id}"),
        ("log: notification", f"/messages?notification={seeded.notification_id}"),
        ("log: two filters", "/messages?status=failed&channel=sms"),
        ("log: provider", "/messages?provider=ses"),
        ("message", f"/messages/{seeded.message_id}"),
        ("message (failed)", f"/messages/{seeded.failed_message_id}"),
        ("notifications", "/notifications"),
        ("notification", f"/notifications/{seeded.notification_id}"),
        ("dead letters", "/dlq"),
        ("templates", "/templates"),
        ("template editor", "/templates/welcome"),
        ("recipients", "/recipients"),
        ("recipients: search", "/recipients?q=user-4242"),
        ("recipient", f"/recipients/{seeded.recipient_id}"),
        ("providers", "/providers"),
        ("webhooks", "/webhooks"),
        ("receipts", "/receipts"),
        ("audit log", "/audit"),
        ("API keys", "/keys"),
        ("members", "/members"),
        ("settings", "/settings"),
        ("account", "/account"),
    ]


async def create_owner(database_url: str) -> tuple[uuid.UUID, str, str]:
    """A verified owner and their enterprise tenant with one live key; (tenant id, e-mail,
    the key's secret)."""
    email = f"bench-{uuid.uuid4().hex[:8]}@example.com"
    engine = create_engine(database_url, pool=False)
    passwords = Passwords()
    try:
        async with session_factory(engine)() as session:
            user, tenant = await accounts.create_account(
                session,
                passwords,
                email=email,
                name="Bench Owner",
                password=PASSWORD,
                company="Bench pages",
                verified=True,
            )
            tenant.plan = "enterprise"
            issued = await keys.issue_key(
                session,
                tenant_id=tenant.id,
                name="bench",
                mode="live",
                scopes=["send", "read", "manage"],
                actor="cli",
            )
            await session.commit()
            return tenant.id, user.email, issued.secret
    finally:
        passwords.close()
        await engine.dispose()


_NOTIFICATIONS = """
INSERT INTO notifications (id, tenant_id, mode, request_hash, template_key, template_version,
                           category, channels, audience, data, priority, status,
                           dispatched_at, created_at)
SELECT id, $1, 'live', md5(id::text), ($2::text[])[1 + (n % cardinality($2::text[]))], 1,
       'transactional', ARRAY['email'], '{"type": "recipients"}'::jsonb, '{}'::jsonb,
       'normal', 'dispatched', created, created
  FROM unnest($3::uuid[], $4::timestamptz[]) WITH ORDINALITY AS t(id, created, n)
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
    "skip_reason",
    "attempts",
    "provider",
    "provider_message_id",
    "error_class",
    "last_error",
    "sent_at",
    "created_at",
    "updated_at",
)


def _status_table(rng: random.Random, count: int) -> list[tuple[str, str | None, str | None]]:
    statuses = [(status, error, skip) for status, _, error, skip in STATUS_MIX]
    weights = [share for _, share, _, _ in STATUS_MIX]
    return rng.choices(statuses, weights, k=count)


async def seed_messages(
    database_url: str, tenant_id: uuid.UUID, recipients: list[uuid.UUID], count: int
) -> None:
    """`count` messages of the tenant in the mix of STATUS_MIX over the last 30 days."""
    rng = random.Random(42)
    now = datetime.now(UTC)
    notifications = -(-count // MESSAGES_PER_NOTIFICATION)
    # Notifications in time order over 30 days, each one's messages created with it.
    moments = [
        now - timedelta(days=30) + timedelta(days=30) * (n / notifications)
        for n in range(notifications)
    ]
    notification_ids = uuid7s(notifications)
    connection = await asyncpg.connect(plain_url(database_url))
    try:
        await connection.execute(
            _NOTIFICATIONS, tenant_id, list(TEMPLATES), notification_ids, moments
        )
        ids = uuid7s(count)
        for first in range(0, count, SEED_CHUNK):
            chunk = ids[first : first + SEED_CHUNK]
            statuses = _status_table(rng, len(chunk))
            rows = []
            for offset, message_id in enumerate(chunk):
                n = first + offset
                notification = n // MESSAGES_PER_NOTIFICATION
                created = moments[notification]
                recipient = n % len(recipients)
                channel, provider = CHANNELS[n % len(CHANNELS)]
                status, error_class, skip_reason = statuses[offset]
                sent = status not in ("queued", "skipped", "failed", "retrying")
                rows.append(
                    (
                        message_id,
                        notification_ids[notification],
                        tenant_id,
                        "live",
                        recipients[recipient],
                        channel,
                        f"user-{recipient}@example.com" if channel == "email" else f"+1555{n:07d}",
                        status,
                        skip_reason,
                        0 if status in ("queued", "skipped") else 1,
                        None if status in ("queued", "skipped") else provider,
                        message_id.hex[:22] if sent else None,
                        error_class,
                        "550 mailbox unavailable" if error_class else None,
                        created + timedelta(seconds=2) if sent else None,
                        created,
                        created,
                    )
                )
            await connection.copy_records_to_table(
                "messages", records=rows, columns=_MESSAGE_COLUMNS
            )
        await connection.execute("VACUUM (ANALYZE) notifications, messages")
    finally:
        await connection.close()


async def _pick(database_url: str, tenant_id: uuid.UUID, email: str) -> Seeded:
    connection = await asyncpg.connect(plain_url(database_url))
    try:
        message = await connection.fetchrow(
            "SELECT id, notification_id, recipient_id FROM messages"
            " WHERE tenant_id = $1 AND mode = 'live' AND status = 'delivered'"
            " ORDER BY id DESC LIMIT 1 OFFSET 5000",
            tenant_id,
        )
        failed = await connection.fetchval(
            "SELECT id FROM messages WHERE tenant_id = $1 AND mode = 'live'"
            " AND status = 'failed' ORDER BY id DESC LIMIT 1",
            tenant_id,
        )
        external = await connection.fetchval(
            "SELECT external_id FROM recipients WHERE id = $1", message["recipient_id"]
        )
    finally:
        await connection.close()
    return Seeded(
        tenant_id,
        email,
        message["id"],
        failed,
        message["notification_id"],
        message["recipient_id"],
        external,
    )


async def seed_recipients(database_url: str, tenant_id: uuid.UUID, count: int) -> None:
    """`count` live recipients `user-<n>` with an e-mail address, by COPY."""
    connection = await asyncpg.connect(plain_url(database_url))
    try:
        for first in range(0, count, SEED_CHUNK):
            size = min(SEED_CHUNK, count - first)
            ids = uuid7s(size)
            rows = [
                (ids[i], tenant_id, "live", f"user-{n}", f"user-{n}@example.com", "en")
                for i, n in enumerate(range(first, first + size))
            ]
            await connection.copy_records_to_table(
                "recipients",
                records=rows,
                columns=("id", "tenant_id", "mode", "external_id", "email", "locale"),
            )
        await connection.execute("VACUUM (ANALYZE) recipients")
    finally:
        await connection.close()


async def _recipient_ids(database_url: str, tenant_id: uuid.UUID) -> list[uuid.UUID]:
    connection = await asyncpg.connect(plain_url(database_url))
    try:
        rows = await connection.fetch(
            "SELECT id FROM recipients WHERE tenant_id = $1 ORDER BY external_id", tenant_id
        )
    finally:
        await connection.close()
    return [row["id"] for row in rows]


async def fold_rollups(settings: Settings) -> None:
    """Fold the overview's rollup deltas, which the seed's COPY wrote through the triggers
    on messages, as the rollup cron would (app/analytics/rollups.py)."""
    from app.analytics import rollups

    assert settings.database_url is not None
    engine = create_engine(settings.database_url, pool=False)
    try:
        async with session_factory(engine)() as session:
            after = 0
            while True:
                round_ = await rollups.compact(session, after=after)
                await session.commit()
                if not round_.seen or round_.last_id is None:
                    return
                after = round_.last_id
    finally:
        await engine.dispose()


def put_templates(base_url: str, secret: str) -> None:
    """The templates the seeded notifications name, through the API as a tenant would."""
    headers = {"Authorization": f"Bearer {secret}"}
    for key in TEMPLATES:
        body = {
            "name": key.replace("-", " ").title(),
            "content": {
                "email": {"subject": f"{key} {{{{ n }}}}", "text": "Hello {{ name }}."},
                "sms": {"text": f"{key}: {{{{ n }}}}"},
            },
        }
        answer = httpx.put(f"{base_url}/v1/templates/{key}", json=body, headers=headers, timeout=60)
        if answer.status_code not in (200, 201):
            raise RuntimeError(
                f"PUT /v1/templates/{key} answered {answer.status_code}: {answer.text}"
            )


def sign_in(client: httpx.Client, email: str) -> None:
    form = client.get("/signin")
    found = TOKEN.search(form.text)
    if not found:
        raise RuntimeError("the sign-in page carries no CSRF token")
    answer = client.post(
        "/signin",
        data={"email": email, "password": PASSWORD, "_csrf_token": found.group(1)},
    )
    if answer.status_code != 303:
        raise RuntimeError(f"sign-in answered {answer.status_code}: {answer.text[:300]}")


def timed(client: httpx.Client, path: str, warm: int, requests: int) -> list[float]:
    """Milliseconds of each of `requests` GETs of `path`, after `warm` unmeasured ones."""
    spent = []
    for n in range(warm + requests):
        began = time.perf_counter()
        answer = client.get(path)
        elapsed = (time.perf_counter() - began) * 1000
        if answer.status_code != 200:
            raise RuntimeError(f"GET {path} answered {answer.status_code}: {answer.text[:300]}")
        if n >= warm:
            spent.append(elapsed)
    return spent


def run(settings: Settings, progress: Progress, options: Options) -> Section:
    assert settings.database_url is not None
    database_url = settings.database_url
    progress.stage(
        f"dashboard: {options.recipients:,} recipients, {options.messages:,} messages by COPY"
    )
    tenant_id, email, secret = asyncio.run(create_owner(database_url))
    seeding = time.perf_counter()
    section = Section("dashboard")
    try:
        asyncio.run(seed_recipients(database_url, tenant_id, options.recipients))
        recipients = asyncio.run(_recipient_ids(database_url, tenant_id))
        asyncio.run(seed_messages(database_url, tenant_id, recipients, options.messages))
        asyncio.run(fold_rollups(settings))
        seeded = asyncio.run(_pick(database_url, tenant_id, email))
        seed_seconds = time.perf_counter() - seeding
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        command = herald("api", "--port", str(port), "--workers", str(API_PROCESSES))
        with running([command], service_env(settings)):
            progress.stage("dashboard: starting the API, signing in")
            wait_ready(url)
            put_templates(url, secret)
            with httpx.Client(base_url=url, timeout=60) as client:
                sign_in(client, email)
                floor = timed(client, "/healthz", options.warm, options.requests)
                section.add("healthz p50", percentile(floor, 0.5), "ms")
                progress.stage(f"dashboard: {len(pages(seeded))} pages")
                slowest = 0.0
                for name, path in pages(seeded):
                    spent = timed(client, path, options.warm, options.requests)
                    p95 = percentile(spent, 0.95)
                    slowest = max(slowest, p95)
                    section.add(f"{name} p95", p95, "ms", target=TARGET_MS)
                    section.details[name] = {
                        "path": path,
                        "p50_ms": round(percentile(spent, 0.5), 1),
                        "p95_ms": round(p95, 1),
                        "max_ms": round(max(spent), 1),
                    }
                section.add("slowest page p95", slowest, "ms", target=TARGET_MS)
    finally:
        retire_tenants(database_url, tenant_id)
    section.notes.append(
        f"seed: {options.recipients:,} recipients and {options.messages:,} messages "
        f"in {seed_seconds:.0f} s; {options.requests} requests per page after {options.warm} "
        "warm-up ones, one client, one API process"
    )
    for name, figures in section.details.items():
        section.notes.append(
            f"{name:<20} {figures['path']:<60} p50 {figures['p50_ms']:>6} ms"
            f"  p95 {figures['p95_ms']:>6} ms  max {figures['max_ms']:>6} ms"
        )
    return section
