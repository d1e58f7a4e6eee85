"""Storing a provider's request as a receipt, and applying the events it verified.

`store` takes what a scheme module (app/receipts/<scheme>.py) made of one request and, in
the caller's transaction:
- writes the receipt: the raw body (at most STORED_BODY_LIMIT bytes of it), its headers
  with secrets redacted, the verdict and the counts;
- for a verified request, writes its events in one statement (`message_events`), each
  provider event once per provider config (a repeated one is skipped by the unique key),
  each tied to its message when the id Herald passed to the provider names a message of
  the config's tenant; a request whose every event was known is `replayed`, and changes
  nothing;
- moves each message forward to the highest-ranked status among its new events
  (app/receipts/progress.py), in one UPDATE that re-checks the rank on the locked row, so
  that concurrent receipts for one message end where the strongest event says;
- suppresses the addresses the events call dead (hard bounce, complaint, unsubscribe), and
  writes the tenant's events for every change (app/webhooks/events.py).

Receipts name no mode: provider configs are live (test keys deliver to the sandbox, which
sends no receipts), so a receipt only ever reaches live messages.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import msgspec
from prometheus_client import Counter
from sqlalchemy import delete, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.ids import uuid7
from app.notifications.models import Message
from app.pagination import Page, in_index_order, keyset_page
from app.providers.models import ProviderConfig
from app.receipts.events import Parsed, ReceiptEvent
from app.receipts.models import MessageEvent, Receipt
from app.receipts.progress import RANK, RANK_SQL, STATUS_KINDS
from app.recipients.suppressions import add_suppressions
from app.recipients.validation import ERASED_PREFIX, suppression_key
from app.tenants.models import Tenant
from app.tenants.plans import limits_for
from app.webhooks import events as outbound
from app.webhooks.events import MESSAGE_EVENT_OF_STATUS

MODE = "live"
STORED_BODY_LIMIT = 256 * 1024  # bytes of a request's body kept with its receipt
UNKNOWN_RETENTION = timedelta(days=7)  # receipts naming no config Herald knows
REDACTED = "[redacted]"
# Headers that carry credentials (Postmark's basic auth, proxies' and cookies).
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "x-api-key"})
DELETE_BATCH = 5_000
MAX_SHOWN_EVENTS = 1_000  # a receipt's events shown with it (a SendGrid batch may hold more)

RECEIPTS = Counter("herald_receipts_total", "Provider webhook requests by verdict", ["verdict"])
RECEIPT_EVENTS = Counter(
    "herald_receipt_events_total", "New provider events by kind", ["provider", "kind"]
)


@dataclass(frozen=True)
class Config:
    """The provider config a receipt came for, as much as storing it needs."""

    id: uuid.UUID
    tenant_id: uuid.UUID
    provider: str
    plan: str


@dataclass(frozen=True)
class Stored:
    receipt_id: uuid.UUID
    verdict: str
    events: int  # events in the request
    new: int  # of them, not seen before
    moved: int  # messages whose status moved


async def config_of(
    session: AsyncSession, config_id: uuid.UUID
) -> tuple[ProviderConfig, str] | None:
    """The provider config a receipt URL names, whatever its tenant, and its tenant's plan."""
    row = (
        await session.execute(
            select(ProviderConfig, Tenant.plan)
            .join(Tenant, Tenant.id == ProviderConfig.tenant_id)
            .where(ProviderConfig.id == config_id)
        )
    ).one_or_none()
    return None if row is None else (row[0], row[1])


def redact(headers: Mapping[str, str]) -> dict[str, str]:
    return {
        name: (REDACTED if name.lower() in SECRET_HEADERS else value[:1000])
        for name, value in list(headers.items())[:100]
    }


async def store_unknown(
    session: AsyncSession,
    *,
    config_id: uuid.UUID,
    headers: Mapping[str, str],
    body_size: int,
    now: datetime,
    reason: str,
) -> uuid.UUID:
    """A request for a config Herald does not know (or that takes no receipts): its body is
    not kept, since anyone may post it."""
    receipt = Receipt(
        id=uuid7(),
        tenant_id=None,
        mode=None,
        provider_config_id=config_id,
        provider=None,
        received_at=now,
        retain_until=now + UNKNOWN_RETENTION,
        verdict="unknown_config",
        reason=reason,
        body=None,
        body_size=body_size,
        headers=redact(headers),
    )
    session.add(receipt)
    await session.flush()
    RECEIPTS.labels("unknown_config").inc()
    return receipt.id


async def store(
    session: AsyncSession,
    config: Config,
    parsed: Parsed,
    *,
    headers: Mapping[str, str],
    body: bytes,
    now: datetime,
) -> Stored:
    """Write the receipt and apply its verified events (see the module's docstring)."""
    receipt = Receipt(
        id=uuid7(),
        tenant_id=config.tenant_id,
        mode=MODE,
        provider_config_id=config.id,
        provider=config.provider,
        received_at=now,
        retain_until=now + timedelta(days=limits_for(config.plan).log_retention_days),
        verdict=parsed.verdict,
        reason=parsed.reason,
        body=body[:STORED_BODY_LIMIT],
        body_size=len(body),
        headers=redact(headers),
        event_count=len(parsed.events),
    )
    session.add(receipt)
    await session.flush()
    if parsed.verdict != "verified" or not parsed.events:
        RECEIPTS.labels(parsed.verdict).inc()
        return Stored(receipt.id, parsed.verdict, len(parsed.events), 0, 0)
    new = await _insert_events(session, config, receipt.id, parsed.events, now)
    receipt.new_events = len(new)
    if not new:
        receipt.verdict = "replayed"
        RECEIPTS.labels("replayed").inc()
        return Stored(receipt.id, "replayed", len(parsed.events), 0, 0)
    for event in new:
        RECEIPT_EVENTS.labels(config.provider, event.kind).inc()
    moved = await _advance(session, config, new, now)
    await _suppress(session, config, new, now)
    RECEIPTS.labels("verified").inc()
    return Stored(receipt.id, "verified", len(parsed.events), len(new), moved)


@dataclass(frozen=True)
class _New:
    id: int
    message_id: uuid.UUID | None
    kind: str
    suppress: str | None
    detail: dict[str, Any]


# One statement for a request's events: each tied to its message when the message is the
# tenant's, and kept only when its provider event id is new for the config.
_INSERT_EVENTS = text(
    """
    INSERT INTO message_events (tenant_id, mode, provider_config_id, provider_event_id,
                                receipt_id, message_id, kind, occurred_at, detail, created_at)
    SELECT :tenant_id, :mode, :config_id, e.event_id, :receipt_id, m.id, e.kind,
           e.occurred_at, e.detail, :now
      FROM unnest(CAST(:event_id AS text[]), CAST(:message_id AS uuid[]),
                  CAST(:kind AS text[]), CAST(:occurred_at AS timestamptz[]),
                  CAST(:detail AS jsonb[]))
           AS e(event_id, message_id, kind, occurred_at, detail)
      LEFT JOIN messages AS m
             ON m.id = e.message_id AND m.tenant_id = :tenant_id AND m.mode = :mode
     -- One order for every writer: two requests repeating each other's events wait, never
     -- deadlock, on the unique key.
     ORDER BY e.event_id
    ON CONFLICT (provider_config_id, provider_event_id) DO NOTHING
    RETURNING id, provider_event_id, message_id
    """
)


async def _insert_events(
    session: AsyncSession,
    config: Config,
    receipt_id: uuid.UUID,
    found: list[ReceiptEvent],
    now: datetime,
) -> list[_New]:
    rows = await session.execute(
        _INSERT_EVENTS,
        {
            "tenant_id": config.tenant_id,
            "mode": MODE,
            "config_id": config.id,
            "receipt_id": receipt_id,
            "now": now,
            "event_id": [e.provider_event_id[:200] for e in found],
            "message_id": [e.message_id for e in found],
            "kind": [e.kind for e in found],
            "occurred_at": [e.occurred_at for e in found],
            "detail": [msgspec.json.encode(_detail(e)).decode() for e in found],
        },
    )
    by_event_id = {e.provider_event_id[:200]: e for e in found}
    return [
        _New(
            row.id,
            row.message_id,
            by_event_id[row.provider_event_id].kind,
            by_event_id[row.provider_event_id].suppress,
            _detail(by_event_id[row.provider_event_id]),
        )
        for row in rows
    ]


def _detail(event: ReceiptEvent) -> dict[str, Any]:
    detail = dict(event.detail)
    if event.provider_message_id:
        detail["provider_message_id"] = event.provider_message_id
    return detail


# Each message to the highest-ranked status among its new events, when that is higher than
# its own: the rank is compared on the row as locked, so a concurrent receipt's move counts.
# The rows are locked in id order first, so that two receipts naming the same messages (a
# provider posts batches side by side) wait for each other instead of deadlocking.
_ADVANCE = text(
    f"""
    WITH e AS (SELECT DISTINCT ON (id) id, kind, rank
                 FROM unnest(CAST(:message_id AS uuid[]), CAST(:kind AS text[]),
                             CAST(:rank AS int[])) AS u(id, kind, rank)
                ORDER BY id, rank DESC),
         locked AS (SELECT m.id FROM messages AS m JOIN e ON e.id = m.id
                     WHERE m.tenant_id = :tenant_id AND m.mode = :mode
                     ORDER BY m.id FOR NO KEY UPDATE OF m)
    UPDATE messages AS m
       SET status = e.kind, updated_at = :now
      FROM e JOIN locked ON locked.id = e.id
     WHERE m.id = e.id AND e.rank > {RANK_SQL.format(column="m.status")}
    RETURNING m.id, m.status
    """  # noqa: S608 (RANK_SQL is built from constants)
)


async def _advance(session: AsyncSession, config: Config, new: list[_New], now: datetime) -> int:
    moves = [e for e in new if e.message_id is not None and e.kind in STATUS_KINDS]
    if not moves:
        return 0
    moved = (
        await session.execute(
            _ADVANCE,
            {
                "message_id": [e.message_id for e in moves],
                "kind": [e.kind for e in moves],
                "rank": [RANK[e.kind] for e in moves],
                "tenant_id": config.tenant_id,
                "mode": MODE,
                "now": now,
            },
        )
    ).all()
    status_of = {row.id: row.status for row in moved}
    applied = [e.id for e in moves if status_of.get(e.message_id) == e.kind]
    if applied:
        await session.execute(
            update(MessageEvent).where(MessageEvent.id.in_(applied)).values(applied=True)
        )
    details = {e.message_id: e.detail for e in moves if status_of.get(e.message_id) == e.kind}
    await outbound.record_messages(
        session,
        [
            outbound.MessageEvent(
                message_id,
                MESSAGE_EVENT_OF_STATUS[status],
                {"receipt": _public_detail(details.get(message_id, {}))},
            )
            for message_id, status in sorted(status_of.items())
        ],
        now,
    )
    return len(moved)


def _public_detail(detail: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in detail.items() if isinstance(v, (str, int, float, bool))}


async def _suppress(session: AsyncSession, config: Config, new: list[_New], now: datetime) -> None:
    """Suppress the addresses of messages whose events say never again, and announce it."""
    wanted = {e.message_id: e for e in new if e.message_id is not None and e.suppress}
    unsubscribed = {
        e.message_id for e in new if e.message_id is not None and e.kind == "unsubscribed"
    }
    ids = set(wanted) | unsubscribed
    if not ids:
        return
    messages = {
        row.id: row
        for row in await session.execute(
            select(Message.id, Message.channel, Message.address, Message.recipient_id).where(
                Message.id.in_(ids), Message.tenant_id == config.tenant_id, Message.mode == MODE
            )
        )
    }
    entries: list[tuple[str, str, str, str]] = []
    reasons: dict[tuple[str, str], tuple[str, Any]] = {}
    for message_id, event in wanted.items():
        message = messages.get(message_id)
        if message is None or event.suppress is None or message.address.startswith(ERASED_PREFIX):
            continue  # an erased recipient's address is gone: nothing to suppress
        reason = event.suppress
        entries.append((message.channel, message.address, reason, config.provider))
        key = (message.channel, suppression_key(message.channel, message.address))
        reasons.setdefault(key, (reason, message))
    added = (
        await add_suppressions(session, tenant_id=config.tenant_id, mode=MODE, entries=entries)
        if entries
        else set()
    )
    announced: list[outbound.RecipientEvent] = []
    for message_id in sorted(unsubscribed):
        message = messages.get(message_id)
        if message is not None:
            announced.append(
                outbound.RecipientEvent(
                    message.recipient_id,
                    "recipient.unsubscribed",
                    {
                        "channel": message.channel,
                        "message_id": str(message_id),
                        "source": config.provider,
                    },
                )
            )
    for key in sorted(added):
        reason, message = reasons[key]
        announced.append(
            outbound.RecipientEvent(
                message.recipient_id,
                "recipient.suppressed",
                {
                    "channel": key[0],
                    "address": key[1],
                    "reason": reason,
                    "message_id": str(message.id),
                    "source": config.provider,
                },
            )
        )
    await outbound.record_recipients(session, announced, now)


async def list_receipts(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    provider_config_id: uuid.UUID | None,
    verdict: str | None,
    limit: int,
    cursor: uuid.UUID | None,
) -> Page[Receipt]:
    """The tenant's receipts, newest first (they are live: provider configs are).

    Each combination of filters has an index of (tenant_id, mode, its columns, id), read
    backwards: a page costs `limit` index entries, whatever the statistics say."""
    query = select(Receipt).where(Receipt.tenant_id == tenant_id, Receipt.mode == MODE)
    if provider_config_id is not None:
        query = query.where(Receipt.provider_config_id == provider_config_id)
    if verdict is not None:
        query = query.where(Receipt.verdict == verdict)
    async with in_index_order(session):
        return await keyset_page(session, query, Receipt.id, limit=limit, cursor=cursor)


async def get_receipt(
    session: AsyncSession, *, tenant_id: uuid.UUID, receipt_id: uuid.UUID
) -> tuple[Receipt, list[MessageEvent]] | None:
    """One of the tenant's receipts and the events it held (at most MAX_SHOWN_EVENTS)."""
    receipt = await session.scalar(
        select(Receipt).where(
            Receipt.id == receipt_id, Receipt.tenant_id == tenant_id, Receipt.mode == MODE
        )
    )
    if receipt is None:
        return None
    events = await session.scalars(
        select(MessageEvent)
        .where(MessageEvent.receipt_id == receipt.id, MessageEvent.tenant_id == tenant_id)
        .order_by(MessageEvent.id)
        .limit(MAX_SHOWN_EVENTS)
    )
    return receipt, list(events)


async def timeline(session: AsyncSession, message_id: uuid.UUID) -> list[MessageEvent]:
    """A message's receipt events, oldest first (the caller has read the message under its
    tenant and mode)."""
    found = await session.scalars(
        select(MessageEvent)
        .where(MessageEvent.message_id == message_id)
        .order_by(MessageEvent.occurred_at, MessageEvent.id)
        .limit(1_000)
    )
    return list(found)


async def delete_expired(session: AsyncSession, now: datetime, *, limit: int = DELETE_BATCH) -> int:
    """Delete up to `limit` receipts past their retention (their events go with them)."""
    expired = (
        select(Receipt.id)
        .where(Receipt.retain_until < now)
        .order_by(Receipt.retain_until)
        .limit(limit)
        .scalar_subquery()
    )
    result = await session.execute(delete(Receipt).where(Receipt.id.in_(expired)))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
