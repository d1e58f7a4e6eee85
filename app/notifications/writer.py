"""The one path that writes notifications: a group commit for POST /v1/notifications.

Each request still waits until its own row is committed (the 202 promise), but requests
that arrive while a write is in flight go out together in the next one, in one
transaction. A batch of N costs one lookup of the Idempotency-Keys already taken, one of
the templates (app/templates/service.py) and one of the categories
(app/categories/service.py), one INSERT and one Redis call, instead of N times that; a
request on an idle server costs what it did alone, with no added delay. A replayed key is
answered before its request is checked: the same key and body get the same answer
whatever changed since. Recipients given inline are upserted in the batch's transaction,
for the notifications that were inserted (not for a replay).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import msgspec
import structlog
from prometheus_client import Histogram
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.auth.keys import Principal
from app.categories.service import criticality
from app.db import session_factory
from app.delivery import outbox
from app.notifications.intake import (
    Accepted,
    AcceptedNotification,
    IdempotencyConflict,
    InvalidNotification,
    category_of,
    inline_recipients,
    notification_row,
    request_hash,
    topic_of,
)
from app.notifications.schemas import NotificationCreate
from app.observability.tracing import current_trace_context
from app.recipients import service as recipients
from app.recipients.schemas import RecipientInput
from app.recipients.topics import existing_topics
from app.recipients.validation import MAX_BATCH as MAX_RECIPIENT_BATCH
from app.templates.service import latest_summaries
from app.usage import quota
from app.usage.meter import Meter
from app.usage.quota import Ask

log = structlog.get_logger(__name__)

MAX_BATCH = 500

BATCH_SIZE = Histogram(
    "herald_intake_batch_size",
    "Notifications written per group commit",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500),
)


class IntakeUnavailable(Exception):
    """The batch could not be written; nothing of it was accepted."""


_INSERT = """
INSERT INTO notifications (id, tenant_id, api_key_id, mode, idempotency_key, request_hash,
                           template_key, template_version, category, channels, audience, data,
                           locale, priority, send_at, status, created_at, trace_context,
                           on_quota_exceeded)
SELECT id, tenant_id, api_key_id, mode, idempotency_key, request_hash, template_key,
       template_version, category, string_to_array(channels, ','), audience::jsonb, data::jsonb,
       locale, priority, send_at, 'accepted', created_at, trace_context, on_quota_exceeded
  FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::text[],
              $7::text[], $8::int[], $9::text[], $10::text[], $11::text[], $12::text[],
              $13::text[], $14::text[], $15::timestamptz[], $16::timestamptz[], $17::text[],
              $18::text[])
       AS v(id, tenant_id, api_key_id, mode, idempotency_key, request_hash, template_key,
            template_version, category, channels, audience, data, locale, priority, send_at,
            created_at, trace_context, on_quota_exceeded)
ON CONFLICT (tenant_id, mode, idempotency_key) DO NOTHING
RETURNING id
"""

_EARLIER = """
SELECT n.tenant_id, n.mode, n.idempotency_key, n.id, n.status, n.priority, n.created_at,
       n.send_at, n.request_hash
  FROM notifications AS n
  JOIN unnest($1::uuid[], $2::text[], $3::text[]) AS k(tenant_id, mode, idempotency_key)
    ON n.tenant_id = k.tenant_id AND n.mode = k.mode AND n.idempotency_key = k.idempotency_key
"""

_INSERT_COLUMNS = (
    "id",
    "tenant_id",
    "api_key_id",
    "mode",
    "idempotency_key",
    "request_hash",
    "template_key",
    "template_version",
    "category",
    "channels",
    "audience",
    "data",
    "locale",
    "priority",
    "send_at",
    "created_at",
    "trace_context",
    "on_quota_exceeded",
)
_JSON_COLUMNS = ("audience", "data")


@dataclass
class _Request:
    principal: Principal
    body: NotificationCreate
    idempotency_key: str | None
    future: asyncio.Future[Accepted]
    trace_context: str | None  # the request's span: the batch is written in another task
    row: dict[str, Any] | None = None
    inline: list[RecipientInput] | None = None  # recipients given inline, to upsert


class IntakeWriter:
    """One per API process: queues accepts and writes them in batches, one batch at a time."""

    def __init__(
        self, engine: AsyncEngine, queue: outbox.Outbox, meter: Meter | None = None
    ) -> None:
        self._sessions = session_factory(engine)
        self._outbox = queue
        self._meter = meter  # None: metering off, no quota enforced
        self._leases = quota.Leases(meter) if meter is not None else None
        self._waiting: list[_Request] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._enqueues: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="intake-writer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await asyncio.gather(*self._enqueues, return_exceptions=True)
        for request in self._waiting:
            if not request.future.done():
                request.future.set_exception(IntakeUnavailable("the server is shutting down"))

    async def accept(
        self, principal: Principal, body: NotificationCreate, idempotency_key: str | None
    ) -> Accepted:
        future: asyncio.Future[Accepted] = asyncio.get_running_loop().create_future()
        request = _Request(principal, body, idempotency_key, future, current_trace_context())
        self._waiting.append(request)
        self._wakeup.set()
        return await future

    async def accept_many(
        self, principal: Principal, items: Sequence[tuple[NotificationCreate, str | None]]
    ) -> list[Accepted | BaseException]:
        """Each (body, Idempotency-Key) accepted as `accept` would, in the same group
        commits: its Accepted, or the error `accept` would have raised for it alone."""
        loop = asyncio.get_running_loop()
        context = current_trace_context()
        requests = [
            _Request(principal, body, key, loop.create_future(), context) for body, key in items
        ]
        self._waiting.extend(requests)
        self._wakeup.set()
        return await asyncio.gather(*(r.future for r in requests), return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            # Let the requests already read off their sockets join this batch: one more
            # turn of the event loop, a much larger batch under load, no wait when idle.
            await asyncio.sleep(0)
            self._wakeup.clear()
            while self._waiting:
                batch = self._waiting[:MAX_BATCH]
                del self._waiting[:MAX_BATCH]
                await self._write_or_fail(batch)

    async def _write_or_fail(self, batch: list[_Request]) -> None:
        BATCH_SIZE.observe(len(batch))
        try:
            await self._write(batch)
        except Exception as error:
            log.exception("intake batch failed", size=len(batch))
            failure = IntakeUnavailable(f"{type(error).__name__}: the write did not happen")
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(failure)

    async def _write(self, batch: list[_Request]) -> None:
        # Without recipients given inline the INSERT is the batch's only write: no
        # transaction around it, two round trips (BEGIN, COMMIT) fewer per batch.
        inline = any(
            isinstance(r.body.to, list) and any(isinstance(i, RecipientInput) for i in r.body.to)
            for r in batch
        )
        autocommit = {} if inline else {"isolation_level": "AUTOCOMMIT"}
        async with self._sessions() as session:
            connection = await session.connection(execution_options=autocommit)
            raw = await connection.get_raw_connection()
            db = raw.driver_connection
            assert db is not None
            held: list[tuple[uuid.UUID, uuid.UUID]] = []
            try:
                await self._validate(session, db, batch)
                held = await self._hold_quota(session, batch)
                valid = [request for request in batch if request.row is not None]
                inserted = await self._insert(db, valid)
                await _upsert_inline(
                    session, [r for r in valid if r.row is not None and r.row["id"] in inserted]
                )
                conflicted = [r for r in valid if r.row is not None and r.row["id"] not in inserted]
                if conflicted:
                    await self._replay(db, conflicted)
                await session.commit()
            except BaseException as error:
                await self._release(held)  # nothing of the batch was accepted
                if isinstance(
                    error, (OSError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError)
                ):
                    # The writer's pool does not ping at checkout: a broken connection is
                    # dropped here, so the next batch gets a new one.
                    await connection.invalidate()
                raise
        # A request that lost its Idempotency-Key to another meanwhile holds nothing.
        await self._release([h for h in held if h[1] not in inserted])
        accepted: list[AcceptedNotification] = []
        for request in valid:
            if request.row is not None and request.row["id"] in inserted:
                answer = _answer(request.row)
                accepted.append(answer)
                _resolve(request, Accepted(answer, replayed=False))
        self._enqueue_later(accepted)

    async def _validate(self, session: AsyncSession, db: Any, batch: list[_Request]) -> None:
        """Build each request's row, or settle its future.

        A request whose Idempotency-Key was taken gets the original answer (or a conflict)
        before any check, so a replay answers the same whatever changed since.
        """
        earlier = await _taken(db, [r for r in batch if r.idempotency_key is not None])
        fresh = []
        for request in batch:
            holder = earlier.get(_taken_key(request))
            if holder is None:
                fresh.append(request)
            else:
                _answer_earlier(request, holder, request_hash(request.body))
        templates = await latest_summaries(
            session, {(r.principal.tenant_id, r.principal.mode, r.body.template) for r in fresh}
        )
        template_of = {
            id(r): templates.get((r.principal.tenant_id, r.principal.mode, r.body.template))
            for r in fresh
        }
        critical = await criticality(
            session,
            {
                (r.principal.tenant_id, r.principal.mode, category_of(r.body, template_of[id(r)]))
                for r in fresh
            },
        )
        topics = await existing_topics(
            session,
            {
                (r.principal.tenant_id, r.principal.mode, topic)
                for r in fresh
                if (topic := topic_of(r.body)) is not None
            },
        )
        for request in fresh:
            principal, template = request.principal, template_of[id(request)]
            category = (principal.tenant_id, principal.mode, category_of(request.body, template))
            try:
                request.row = notification_row(
                    principal, request.body, template, category_critical=critical.get(category)
                )
                topic = topic_of(request.body)
                if topic is not None and (principal.tenant_id, principal.mode, topic) not in topics:
                    raise InvalidNotification(
                        "to.topic", f"no topic {topic!r} in {principal.mode} mode"
                    )
                request.inline = inline_recipients(request.body)
            except InvalidNotification as invalid:
                request.row = None
                _fail(request, invalid)
                continue
            request.row["idempotency_key"] = request.idempotency_key
            request.row["trace_context"] = request.trace_context
            request.row["request_hash"] = request_hash(request.body)

    async def _hold_quota(
        self, session: AsyncSession, batch: list[_Request]
    ) -> list[tuple[uuid.UUID, uuid.UUID]]:
        """Hold the quota each live request to a list of recipients will use, refusing the
        requests it would take past a blocking plan's quota (app/usage/quota.py); the
        (tenant, notification) pairs that hold some."""
        if self._meter is None:
            return []
        asking: list[tuple[_Request, Ask]] = []
        for request in batch:
            row = request.row
            if row is None or row["mode"] != "live" or "recipients" not in row["audience"]:
                continue
            ask = Ask(
                row["tenant_id"],
                request.principal.plan,
                row["id"],
                row["channels"],
                len(row["audience"]["recipients"]),
                row["send_at"],
            )
            asking.append((request, ask))
        if not asking:
            return []
        try:
            refusals = await quota.hold(
                session, self._meter, [ask for _, ask in asking], self._leases
            )
        except RedisError:
            # Availability first: with Redis unreachable the batch is accepted unmetered at
            # intake (dispatch still counts what it writes once Redis is back).
            log.exception("quota not checked: Redis unreachable", size=len(asking))
            return []
        held = []
        for (request, ask), refusal in zip(asking, refusals, strict=True):
            if refusal is None:
                held.append((ask.tenant_id, ask.notification_id))
            else:
                request.row = None
                _fail(request, refusal)
        return held

    async def _release(self, holds: list[tuple[uuid.UUID, uuid.UUID]]) -> None:
        """Give back what (tenant, notification) held: the notification was not accepted."""
        if self._meter is None or not holds:
            return
        try:
            await self._meter.release(holds)
        except Exception:
            # A hold not given back lapses at its expiry (app/usage/meter.py).
            log.exception("quota holds not released", size=len(holds))

    async def _insert(self, db: Any, requests: Sequence[_Request]) -> set[uuid.UUID]:
        if not requests:
            return set()
        columns: list[list[Any]] = [[] for _ in _INSERT_COLUMNS]
        for request in requests:
            row = request.row
            assert row is not None
            for values, name in zip(columns, _INSERT_COLUMNS, strict=True):
                value = row[name]
                if name in _JSON_COLUMNS:
                    value = msgspec.json.encode(value).decode()
                elif name == "channels":
                    value = ",".join(value)
                values.append(value)
        return {record[0] for record in await db.fetch(_INSERT, *columns)}

    async def _replay(self, db: Any, requests: list[_Request]) -> None:
        """Requests whose Idempotency-Key was taken meanwhile: the original answer or a conflict."""
        earlier = {
            (record["tenant_id"], record["mode"], record["idempotency_key"]): record
            for record in await db.fetch(
                _EARLIER,
                [r.principal.tenant_id for r in requests],
                [r.principal.mode for r in requests],
                [r.idempotency_key for r in requests],
            )
        }
        for request in requests:
            assert request.row is not None
            record = earlier.get(_taken_key(request))
            digest = request.row["request_hash"]
            request.row = None
            if record is None:  # the original was deleted with its tenant meanwhile
                _fail(request, IntakeUnavailable("the original request is gone"))
            else:
                _answer_earlier(request, record, digest)

    def _enqueue_later(self, accepted: list[AcceptedNotification]) -> None:
        """Enqueue dispatch for the batch without holding its answers back.

        The rows are committed: if Redis is unreachable, the outbox relay enqueues them.
        """
        if not accepted:
            return
        task = asyncio.create_task(self._enqueue(accepted))
        self._enqueues.add(task)
        task.add_done_callback(self._enqueues.discard)

    async def _enqueue(self, accepted: list[AcceptedNotification]) -> None:
        jobs = [outbox.dispatch(n.id, n.priority, n.send_at) for n in accepted]
        await self._outbox.enqueue_after_commit(jobs)


async def _taken(db: Any, requests: list[_Request]) -> dict[tuple[uuid.UUID, str, str], Any]:
    """The notifications already holding the requests' Idempotency-Keys, by key."""
    if not requests:
        return {}
    keys = list(dict.fromkeys(_taken_key(r) for r in requests))
    records = await db.fetch(
        _EARLIER, [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]
    )
    return {(r["tenant_id"], r["mode"], r["idempotency_key"]): r for r in records}


async def _upsert_inline(session: AsyncSession, inserted: list[_Request]) -> None:
    """Upsert the inline recipients of the notifications inserted, per tenant and mode.

    In arrival order, a later request's fields winning (as if each had upserted its own);
    sorted by id (stable) and cut in pieces of the upsert's limit, so that concurrent
    batches lock their rows in the same order.
    """
    by_owner: dict[tuple[uuid.UUID, str], list[RecipientInput]] = {}
    for request in inserted:
        if request.inline:
            owner = (request.principal.tenant_id, request.principal.mode)
            by_owner.setdefault(owner, []).extend(request.inline)
    for (tenant_id, mode), items in by_owner.items():
        items.sort(key=lambda item: item.external_id)
        for start in range(0, len(items), MAX_RECIPIENT_BATCH):
            await recipients.upsert_recipients(
                session,
                tenant_id=tenant_id,
                mode=mode,
                items=items[start : start + MAX_RECIPIENT_BATCH],
            )


def _taken_key(request: _Request) -> tuple[uuid.UUID, str, str]:
    """Where an Idempotency-Key is unique: per tenant and mode."""
    principal = request.principal
    return (principal.tenant_id, principal.mode, request.idempotency_key or "")


def _answer_earlier(request: _Request, earlier: Any, digest: str) -> None:
    """Settle a request whose key an earlier notification holds: replay it, or conflict."""
    if earlier["request_hash"] != digest:
        _fail(request, IdempotencyConflict(earlier["id"]))
        return
    answer = AcceptedNotification(
        earlier["id"],
        earlier["status"],
        earlier["priority"],
        earlier["created_at"],
        earlier["send_at"],
    )
    _resolve(request, Accepted(answer, replayed=True))


def _answer(row: dict[str, Any]) -> AcceptedNotification:
    return AcceptedNotification(
        row["id"], row["status"], row["priority"], row["created_at"], row["send_at"]
    )


def _resolve(request: _Request, accepted: Accepted) -> None:
    if not request.future.done():  # the client may have gone away meanwhile
        request.future.set_result(accepted)


def _fail(request: _Request, error: Exception) -> None:
    if not request.future.done():
        request.future.set_exception(error)
