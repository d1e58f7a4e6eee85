"""Group commit for POST /v1/notifications: concurrent requests share their statements.

Each request still waits until its own row is committed (the 202 promise), but requests
that arrive while a write is in flight go out together in the next one. A batch of N costs
one lookup (templates, categories, Idempotency-Keys already taken), one INSERT and one Redis
call instead of N times that; a request on an idle server costs what it did alone, with no
added delay. A replayed key is answered before its request is validated, as on the
per-request path: the same key and body get the same answer whatever changed since.

Requests that carry inline recipients upsert them in the same transaction as the
notification and take the per-request path (`intake.accept`).
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
from sqlalchemy.ext.asyncio import AsyncEngine

from app.auth.keys import Principal
from app.categories.service import DEFAULT_CATEGORIES
from app.channels import CHANNELS
from app.notifications.intake import (
    Accepted,
    AcceptedNotification,
    IdempotencyConflict,
    InvalidNotification,
    category_of,
    notification_row,
    request_hash,
)
from app.notifications.schemas import NotificationCreate
from app.observability.tracing import current_trace_context
from app.templates.service import TemplateSummary
from jobs import queues

log = structlog.get_logger(__name__)

MAX_BATCH = 500

BATCH_SIZE = Histogram(
    "herald_intake_batch_size",
    "Notifications written per group commit",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500),
)


class IntakeUnavailable(Exception):
    """The batch could not be written; nothing of it was accepted."""


# One round trip for the batch. Kind 0, per distinct (tenant, mode, template key, asked
# category): the newest version of the mode and, when the category that applies exists as a
# row, whether it is critical (default categories exist without one). Kind 1, per (tenant,
# mode, Idempotency-Key) already taken: the notification holding it.
_LOOKUP = """
SELECT 0 AS kind, v.i, t.version, t.category, t.channels, c.critical AS category_critical,
       NULL::uuid AS tenant_id, NULL::text AS mode, NULL::text AS idempotency_key,
       NULL::uuid AS id, NULL::text AS status, NULL::text AS priority,
       NULL::timestamptz AS created_at, NULL::timestamptz AS send_at, NULL::text AS request_hash
  FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[])
       WITH ORDINALITY AS v(tenant_id, mode, key, category, i)
  LEFT JOIN LATERAL (
        SELECT version, category, ARRAY(SELECT jsonb_object_keys(content)) AS channels
          FROM templates
         WHERE tenant_id = v.tenant_id AND mode = v.mode AND key = v.key
           AND deleted_at IS NULL
         ORDER BY version DESC
         LIMIT 1) AS t ON true
  LEFT JOIN categories AS c
         ON c.tenant_id = v.tenant_id AND c.mode = v.mode
        AND c.key = coalesce(v.category, t.category, 'transactional')
UNION ALL
SELECT 1, NULL, NULL, NULL, NULL, NULL, n.tenant_id, n.mode, n.idempotency_key, n.id, n.status,
       n.priority, n.created_at, n.send_at, n.request_hash
  FROM notifications AS n
  JOIN unnest($5::uuid[], $6::text[], $7::text[]) AS k(tenant_id, mode, idempotency_key)
    ON n.tenant_id = k.tenant_id AND n.mode = k.mode AND n.idempotency_key = k.idempotency_key
"""

_INSERT = """
INSERT INTO notifications (id, tenant_id, api_key_id, mode, idempotency_key, request_hash,
                           template_key, template_version, category, channels, audience, data,
                           locale, priority, send_at, status, created_at, trace_context)
SELECT id, tenant_id, api_key_id, mode, idempotency_key, request_hash, template_key,
       template_version, category, string_to_array(channels, ','), audience::jsonb, data::jsonb,
       locale, priority, send_at, 'accepted', created_at, trace_context
  FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::text[],
              $7::text[], $8::int[], $9::text[], $10::text[], $11::text[], $12::text[],
              $13::text[], $14::text[], $15::timestamptz[], $16::timestamptz[], $17::text[])
       AS v(id, tenant_id, api_key_id, mode, idempotency_key, request_hash, template_key,
            template_version, category, channels, audience, data, locale, priority, send_at,
            created_at, trace_context)
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


class IntakeWriter:
    """One per API process: queues accepts and writes them in batches, one batch at a time."""

    def __init__(self, engine: AsyncEngine, arq: Any) -> None:
        self._engine = engine
        self._arq = arq
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
        async with self._engine.connect() as connection:
            raw = await connection.get_raw_connection()
            db = raw.driver_connection
            assert db is not None
            try:
                await self._validate(db, batch)
                valid = [request for request in batch if request.row is not None]
                inserted = await self._insert(db, valid)
                conflicted = [r for r in valid if r.row is not None and r.row["id"] not in inserted]
                if conflicted:
                    await self._replay(db, conflicted)
            except (OSError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError):
                # The writer's pool does not ping at checkout: a broken connection is
                # dropped here, so the next batch gets a new one.
                await connection.invalidate()
                raise
        accepted: list[AcceptedNotification] = []
        for request in valid:
            if request.row is not None and request.row["id"] in inserted:
                answer = _answer(request.row)
                accepted.append(answer)
                _resolve(request, Accepted(answer, replayed=False))
        self._enqueue_later(accepted)

    async def _validate(self, db: Any, batch: list[_Request]) -> None:
        """Build each request's row, or settle its future.

        A request whose Idempotency-Key was taken gets the original answer (or a conflict)
        before any check, so a replay answers the same whatever changed since.
        """
        keys = list(dict.fromkeys(_lookup_key(request) for request in batch))
        taken = list(
            dict.fromkeys(
                (r.principal.tenant_id, r.principal.mode, r.idempotency_key)
                for r in batch
                if r.idempotency_key is not None
            )
        )
        rows = await db.fetch(
            _LOOKUP,
            [k[0] for k in keys],
            [k[1] for k in keys],
            [k[2] for k in keys],
            [k[3] for k in keys],
            [t[0] for t in taken],
            [t[1] for t in taken],
            [t[2] for t in taken],
        )
        found: dict[_LookupKey, tuple[TemplateSummary | None, bool | None]] = {}
        earlier: dict[tuple[uuid.UUID, str, str], Any] = {}
        for row in rows:
            if row["kind"] == 1:
                earlier[(row["tenant_id"], row["mode"], row["idempotency_key"])] = row
                continue
            template = None
            if row["version"] is not None:
                present = set(row["channels"])
                template = TemplateSummary(
                    keys[row["i"] - 1][2],
                    row["version"],
                    row["category"],
                    [c for c in CHANNELS if c in present],
                )
            found[keys[row["i"] - 1]] = (template, row["category_critical"])
        for request in batch:
            template, critical = found[_lookup_key(request)]
            digest = request_hash(request.body)
            holder = earlier.get(_taken_key(request))
            if holder is not None:
                _answer_earlier(request, holder, digest)
                continue
            if critical is None:  # no row: a built-in category, or none at all
                default = DEFAULT_CATEGORIES.get(category_of(request.body, template))
                critical = None if default is None else default.critical
            try:
                request.row = notification_row(
                    request.principal, request.body, template, category_critical=critical
                )
            except InvalidNotification as invalid:
                _fail(request, invalid)
                continue
            request.row["idempotency_key"] = request.idempotency_key
            request.row["trace_context"] = request.trace_context
            request.row["request_hash"] = digest

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
        jobs = [queues.dispatch_job(n.id, n.priority, n.send_at) for n in accepted]
        try:
            await queues.enqueue_many(self._arq, jobs)
        except Exception:
            log.exception("enqueue failed; the relay will enqueue", count=len(jobs))


_LookupKey = tuple[uuid.UUID, str, str, str | None]


def _lookup_key(request: _Request) -> _LookupKey:
    principal = request.principal
    return (principal.tenant_id, principal.mode, request.body.template, request.body.category)


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
