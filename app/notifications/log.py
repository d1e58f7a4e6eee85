"""The delivery log: a tenant's messages, filtered, newest first, a page at a time; the
messages made since a page was read; one message's whole story.

Every read is bound to the tenant and the mode and costs one bounded index range, however
many messages the tenant has, and nothing counts the tenant's messages. The time filter is
a range of ids (they are UUIDv7: their first 48 bits are the millisecond they were made).
A notification, a recipient and a settled status (sent, delivered, failed…: not queued,
sending or retrying) have indexes that end in the message id (migration 0028): a page of
one of them is the first rows of its range.

Every index of `messages` costs each claim and each outcome an entry, since every status
change is a new row version (status is in the partial indexes' predicates, so none is a
HOT update): the six indexes these filters first had halved the claim UPDATE's rate (the
`pg_claim` ceiling). So channel, provider, error class and an in-flight status have none:
they, like any filter combined with another, are checked on SCAN_WINDOW entries at most of
the lead's index (the tenant's own when no filter has one). A rare value gives a short
page with a cursor further back, never a scan of every message. The settled-status index
leaves the in-flight statuses out so that a claim (queued to sending) adds nothing to it.

A page of the template filter goes through the template's notifications (newest first,
TEMPLATE_SCAN of them at most) and takes each one's newest messages: a template's messages
are not an index range of messages, and walking the tenant's messages to find a rare
template's would read all of them. So under that filter the log is ordered by notification,
then message, and its cursor names both.

Live updates: a page reads the newest message id of the tenant's mode first (`high water`)
and shows nothing newer; `newer()` returns the matching messages above that mark and the
new mark, so each poll reads only what was made since the last one. A message whose
transaction commits after a poll passed its id (two dispatches committing out of order) is
shown on the next reload, not live.
"""

from __future__ import annotations

import base64
import binascii
import operator
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    ColumnElement,
    Select,
    case,
    func,
    literal_column,
    select,
    true,
    tuple_,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from app.notifications.models import IN_FLIGHT, SETTLED, Attempt, Message, Notification, Render
from app.notifications.queries import in_utc
from app.receipts import service as receipts
from app.receipts.models import MessageEvent
from app.recipients.models import Recipient

PAGE_SIZE = 50
# Notifications of a template a page reads at most: a page that found fewer than PAGE_SIZE
# messages in them still ends, with a cursor that carries on after the last one read.
TEMPLATE_SCAN = 200
# Entries of the lead filter's index a page reads at most when other filters are combined
# with it (status and channel, say): a page that found fewer matches in them ends there,
# with a cursor that carries on below them.
SCAN_WINDOW = 5_000
NEWEST_FIRST = uuid.UUID(int=(1 << 128) - 1)  # above every id: "from the newest"
NOTHING = uuid.UUID(int=0)  # below every id: a tenant with no message yet
_UUID7_MILLIS = (1 << 48) - 1
_UUID7_FIXED = (0x7 << 76) | (0b10 << 62)  # version and variant bits


class BadCursor(ValueError):
    """A cursor this module did not make (or a mangled one)."""


@dataclass(frozen=True)
class LogFilters:
    """What the log shows; None is "any". Checked and bounded by the caller."""

    status: str | None = None
    channel: str | None = None
    recipient: str | None = None  # the recipient's external id
    template: str | None = None  # the notification's template key
    notification_id: uuid.UUID | None = None
    since: datetime | None = None
    until: datetime | None = None
    provider: str | None = None
    error_class: str | None = None


@dataclass(frozen=True)
class Cursor:
    """Where a page ends: after message `message_id` (of `notification_id` under the
    template filter's order). Opaque to pages: `encode()` / `Cursor.decode()`."""

    message_id: uuid.UUID
    notification_id: uuid.UUID | None = None

    def encode(self) -> str:
        raw = self.message_id.bytes
        if self.notification_id is not None:
            raw = self.notification_id.bytes + raw
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        if len(text) > 64:
            raise BadCursor(text)
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            raise BadCursor(text) from None
        if len(raw) == 16:
            return cls(uuid.UUID(bytes=raw))
        if len(raw) == 32:
            return cls(uuid.UUID(bytes=raw[16:]), uuid.UUID(bytes=raw[:16]))
        raise BadCursor(text)


@dataclass(frozen=True)
class LogRow:
    message: Message
    recipient: str | None  # external id; None once the recipient is erased
    template: str | None


@dataclass(frozen=True)
class LogPage:
    rows: list[LogRow]
    older: Cursor | None  # the next page's start, when there is one
    high_water: uuid.UUID  # newest message id of the mode when read: live updates go on above


@dataclass(frozen=True)
class Newer:
    rows: list[LogRow]  # newest first
    high_water: uuid.UUID
    overflow: bool  # more than a page arrived: the rows are left out, reload instead


def uuid7_floor(moment: datetime) -> uuid.UUID:
    """The smallest UUIDv7 of `moment`'s millisecond: ids made at or after it are >= it."""
    millis = int(in_utc(moment).timestamp() * 1000)
    return uuid.UUID(int=(max(0, min(millis, _UUID7_MILLIS)) << 80) | _UUID7_FIXED)


async def high_water(session: AsyncSession, *, tenant_id: uuid.UUID, mode: str) -> uuid.UUID:
    """The newest message id of the tenant's mode (NOTHING when it has none)."""
    # ix_messages_tenant_id_mode_id, read backwards: one entry.
    newest = await session.scalar(
        select(Message.id)
        .where(Message.tenant_id == tenant_id, Message.mode == mode)
        .order_by(Message.id.desc())
        .limit(1)
    )
    return newest or NOTHING


async def _recipient_id(
    session: AsyncSession, tenant_id: uuid.UUID, mode: str, external_id: str
) -> uuid.UUID | None:
    found: uuid.UUID | None = await session.scalar(
        select(Recipient.id).where(
            Recipient.tenant_id == tenant_id,
            Recipient.mode == mode,
            Recipient.external_id == external_id,
        )
    )
    return found


class _Range:
    """The conditions of one index range of messages: the tenant, the mode, the filters'
    equalities, and bounds on the id written for the index the range should read.

    PostgreSQL here plans without statistics (autovacuum is off): given `status = 'bounced'
    AND id < :cursor`, it costs ix_messages_tenant_id_mode_id (tenant, mode, id) and the
    status index alike, picks the smaller, and then filters a million entries. Written as a
    row comparison on the filter's column and the id, `(status, id) < ('bounced', :cursor)`,
    the bound is an index condition of the filter's index only, which then wins for sure.
    The `lead` is the filter whose index is read: the most selective one given.
    """

    def __init__(
        self,
        tenant_id: uuid.UUID,
        mode: str,
        filters: LogFilters,
        recipient_id: uuid.UUID | None,
        notification: Any = None,  # a notification id column (the template filter's lateral)
    ) -> None:
        self.conditions: list[ColumnElement[bool]] = [
            Message.tenant_id == tenant_id,
            Message.mode == mode,
        ]
        # The filters with an index, most selective first: the first one given leads (its
        # index is read). A status leads only where its index holds it (settled ones).
        settled = filters.status if filters.status not in IN_FLIGHT else None
        indexed: list[tuple[Any, Any]] = [
            (Message.notification_id, notification),
            (Message.notification_id, filters.notification_id),
            (Message.recipient_id, recipient_id),
            (Message.status, settled),
        ]
        given = [(column, value) for column, value in indexed if value is not None]
        self.lead = given[0] if given else None
        if self.lead is not None:
            self.conditions.append(self.lead[0] == self.lead[1])
            if self.lead[0] is Message.status:
                # The index's own predicate, as text: the planner proves it implied without
                # reading the status's value (a parameter in a generic plan).
                self.conditions.append(literal_column(f"({SETTLED})", Boolean))
        # The other filters' conditions: checked on the lead's range (see `window`).
        unindexed = [
            (Message.status, filters.status),
            (Message.error_class, filters.error_class),
            (Message.provider, filters.provider),
            (Message.channel, filters.channel),
        ]
        self.others: list[tuple[str, Any]] = [
            (column.key, value)
            for column, value in [*given[1:], *unindexed]
            if value is not None and (self.lead is None or column is not self.lead[0])
        ]
        if filters.since is not None:
            self.bound(operator.ge, uuid7_floor(filters.since))
        if filters.until is not None:
            self.bound(operator.lt, uuid7_floor(filters.until))

    def bound(self, compare: Callable[[Any, Any], Any], at: Any) -> None:
        """Add `id <compare> at`, as an index condition of the lead's index."""
        if self.lead is None:
            self.conditions.append(compare(Message.id, at))
            return
        column, value = self.lead
        self.conditions.append(compare(tuple_(column, Message.id), tuple_(value, at)))

    def everything(self, on: Any = Message) -> list[ColumnElement[bool]]:
        return [*self.conditions, *(getattr(on, key) == value for key, value in self.others)]

    def newest(self, limit: int) -> Select[Any]:
        """All the conditions in one statement: for short ranges (a poll's, a notification's)."""
        return select(Message).where(*self.everything()).order_by(Message.id.desc()).limit(limit)

    def window(self, limit: int) -> tuple[Select[Any], Select[Any]]:
        """With other filters than the lead's: the lead's newest SCAN_WINDOW entries, the
        `limit` newest of them that match the others, and (a second statement) the window's
        oldest id and size. No combination of filters reads more than the window a page.
        """
        window = (
            select(Message)
            .where(*self.conditions)
            .order_by(Message.id.desc())
            .limit(SCAN_WINDOW)
            .subquery("w")
        )
        seen = aliased(Message, window)
        matching = (
            select(seen)
            .where(*(getattr(seen, key) == value for key, value in self.others))
            .order_by(seen.id.desc())
            .limit(limit)
        )
        ids = (
            select(Message.id)
            .where(*self.conditions)
            .order_by(Message.id.desc())
            .limit(SCAN_WINDOW)
            .subquery("ids")
        )
        # The oldest id and the count in one row (uuid has no min() in PostgreSQL 15).
        extent = select(ids.c.id, func.count().over()).order_by(ids.c.id).limit(1)
        return matching, extent


async def log_page(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    mode: str,
    filters: LogFilters,
    cursor: Cursor | None = None,
    limit: int = PAGE_SIZE,
) -> LogPage:
    """A page of the tenant's messages of `mode` matching `filters`, newest first, starting
    after `cursor` (the first page when None)."""
    mark = await high_water(session, tenant_id=tenant_id, mode=mode)
    recipient_id = None
    if filters.recipient is not None:
        recipient_id = await _recipient_id(session, tenant_id, mode, filters.recipient)
        if recipient_id is None:
            return LogPage([], None, mark)
    if filters.template is not None:
        return await _template_page(
            session, tenant_id, mode, filters, recipient_id, cursor, limit, mark
        )
    scan = _Range(tenant_id, mode, filters, recipient_id)
    if cursor is None:
        # Nothing above the mark: live updates show what comes after it, once.
        scan.bound(operator.le, mark)
    else:
        scan.bound(operator.lt, cursor.message_id)
    if not scan.others:
        messages = list((await session.scalars(scan.newest(limit + 1))).all())
        older = Cursor(messages[limit - 1].id) if len(messages) > limit else None
        return LogPage(await _rows(session, tenant_id, messages[:limit]), older, mark)
    matching, extent = scan.window(limit + 1)
    messages = list((await session.scalars(matching)).all())
    if len(messages) > limit:
        older = Cursor(messages[limit - 1].id)
    else:
        # A full window held fewer matches than a page: the next page looks further back.
        edge = (await session.execute(extent)).first()  # None: the range was empty
        older = Cursor(edge[0]) if edge is not None and edge[1] == SCAN_WINDOW else None
    return LogPage(await _rows(session, tenant_id, messages[:limit]), older, mark)


async def _template_page(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    mode: str,
    filters: LogFilters,
    recipient_id: uuid.UUID | None,
    cursor: Cursor | None,
    limit: int,
    mark: uuid.UUID,
) -> LogPage:
    """The template filter's page: its notifications newest first (ix_notifications_tenant_
    id_mode_template_key_id), each one's newest messages (ix_messages_tenant_id_mode_
    notification_id_id)."""
    scanned = select(Notification.id).where(
        Notification.tenant_id == tenant_id,
        Notification.mode == mode,
        Notification.template_key == filters.template,
    )
    # A notification is older than its messages: the time filter bounds them too (under
    # this filter, "since" counts from when the notification was accepted).
    if filters.since is not None:
        scanned = scanned.where(Notification.id >= uuid7_floor(filters.since))
    if filters.until is not None:
        scanned = scanned.where(Notification.id < uuid7_floor(filters.until))
    if filters.notification_id is not None:
        scanned = scanned.where(Notification.id == filters.notification_id)
    # A row comparison, for the template's index to be the one read (see _Range).
    top = cursor.notification_id if cursor is not None else None
    scanned = scanned.where(
        tuple_(Notification.template_key, Notification.id)
        <= tuple_(filters.template, top or NEWEST_FIRST)
    )
    scanned = scanned.order_by(Notification.id.desc()).limit(TEMPLATE_SCAN)
    notification_ids = list((await session.scalars(scanned)).all())
    if not notification_ids:
        return LogPage([], None, mark)
    notes = scanned.subquery("n")
    scan = _Range(tenant_id, mode, filters, recipient_id, notification=notes.c.id)
    if cursor is None:
        scan.bound(operator.le, mark)
    elif cursor.notification_id is not None:
        # Within the cursor's notification, below its message; in older ones, from the top.
        scan.bound(
            operator.lt,
            case((notes.c.id == cursor.notification_id, cursor.message_id), else_=NEWEST_FIRST),
        )
    each = scan.newest(limit + 1).lateral("m")
    picked = aliased(Message, each)
    query: Select[Any] = (
        select(picked)
        .select_from(notes)
        .join(each, true())
        .order_by(notes.c.id.desc(), each.c.id.desc())
        .limit(limit + 1)
    )
    messages = list((await session.scalars(query)).all())
    older: Cursor | None = None
    if len(messages) > limit:
        last = messages[limit - 1]
        older = Cursor(last.id, last.notification_id)
    elif len(notification_ids) == TEMPLATE_SCAN:
        # This page read as many notifications as one may: the next starts below them.
        older = Cursor(NOTHING, notification_ids[-1])
    rows = await _rows(session, tenant_id, messages[:limit])
    return LogPage(rows, older, mark)


async def newer(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    mode: str,
    filters: LogFilters,
    after: uuid.UUID,
    limit: int = PAGE_SIZE,
) -> Newer:
    """The messages matching `filters` made since the mark `after`, newest first, and the
    new mark. Reads only the ids between the two marks."""
    mark = await high_water(session, tenant_id=tenant_id, mode=mode)
    if mark <= after:
        return Newer([], after, False)
    recipient_id = None
    if filters.recipient is not None:
        recipient_id = await _recipient_id(session, tenant_id, mode, filters.recipient)
        if recipient_id is None:
            return Newer([], mark, False)
    scan = _Range(tenant_id, mode, filters, recipient_id)
    scan.bound(operator.gt, after)
    scan.bound(operator.le, mark)
    if filters.template is not None:
        # Per message, its notification by primary key: the range holds one poll's worth.
        template = (
            select(Notification.template_key)
            .where(Notification.id == Message.notification_id)
            .scalar_subquery()
        )
        scan.conditions.append(template == filters.template)
    messages = list((await session.scalars(scan.newest(limit + 1))).all())
    if len(messages) > limit:
        return Newer([], mark, True)
    return Newer(await _rows(session, tenant_id, messages), mark, False)


async def _rows(
    session: AsyncSession, tenant_id: uuid.UUID, messages: list[Message]
) -> list[LogRow]:
    """The page's messages with their recipients' external ids and templates' keys.

    Read by primary key alone: with the tenant in the condition too, PostgreSQL without
    statistics read the tenant's whole recipients index instead. The messages are the
    tenant's already; a row of another tenant (there is none) would be left out here.
    """
    if not messages:
        return []
    recipients = {
        row.id: row.external_id
        for row in await session.execute(
            select(Recipient.id, Recipient.tenant_id, Recipient.external_id).where(
                Recipient.id.in_({m.recipient_id for m in messages})
            )
        )
        if row.tenant_id == tenant_id
    }
    templates = {
        row.id: row.template_key
        for row in await session.execute(
            select(Notification.id, Notification.tenant_id, Notification.template_key).where(
                Notification.id.in_({m.notification_id for m in messages})
            )
        )
        if row.tenant_id == tenant_id
    }
    return [
        LogRow(m, recipients.get(m.recipient_id), templates.get(m.notification_id))
        for m in messages
    ]


# --- One message -----------------------------------------------------------------------

# Why a message was not sent, in the tenant's words, by skip reason (app/recipients/
# planning.py, app/delivery/claims.py, app/dlq/service.py, app/recipients/erasure.py).
SKIP_REASONS: dict[str, str] = {
    "kill_switch": (
        "A kill switch was on for this channel: your settings stopped non-critical messages "
        "on it, so Herald did not send this one."
    ),
    "no_address": (
        "The recipient has no address for this channel (no e-mail, phone number or device), "
        "so there was nowhere to send it."
    ),
    "opted_out": (
        "The recipient opted out of this category on this channel in their preferences. "
        "Critical categories ignore opt-outs; this one is not critical."
    ),
    "suppressed": (
        "The address is on your suppression list (an earlier hard bounce, a spam complaint "
        "or an unsubscribe), so Herald did not send to it."
    ),
    "discarded": "Someone discarded it from the dead-letter queue; it will not be retried.",
    "erased": "The recipient was erased, and their unsent messages with them.",
    "quota": (
        "Your plan's monthly quota for this channel was used up when this broadcast reached "
        "this recipient, so Herald did not send it. It resets at the start of next month. "
        "A broadcast larger than the quota left can be refused whole instead (your settings, "
        "or the notification's on_quota_exceeded)."
    ),
}

# Why a failed message failed, by error class (app/providers/base.py; `render` from dispatch).
ERROR_CLASSES: dict[str, str] = {
    "transient": (
        "The provider could not be reached or answered with a server error on every attempt "
        "until the retry budget ran out."
    ),
    "rate_limited": (
        "The provider kept refusing it for its rate limit or quota until the retry window closed."
    ),
    "permanent": (
        "The provider refused it for good (an invalid address, an unregistered device or a "
        "rejected message): retrying would not help."
    ),
    "config": (
        "The provider refused your credentials or configuration: check the provider's "
        "settings, then replay it from the dead-letter queue."
    ),
    "render": (
        "The template could not be rendered for this recipient (an error in the template or "
        "missing data), so there was nothing to send."
    ),
}
RECEIPT_OUTCOMES: dict[str, str] = {
    "bounced": (
        "The provider accepted it, then the receiving server bounced it. A hard bounce puts "
        "the address on your suppression list."
    ),
    "complained": (
        "It was delivered and the recipient marked it as spam: the address is now suppressed."
    ),
    "undelivered": "The provider accepted it but reported that it could not deliver it.",
}


def why_not_sent(message: Message) -> str | None:
    """Why the message did not reach its recipient (or has not yet), in plain words; None
    for one sent or on its way."""
    status = message.status
    if status == "skipped":
        return SKIP_REASONS.get(
            message.skip_reason or "", f"Herald skipped it ({message.skip_reason or 'no reason'})."
        )
    if status == "cancelled":
        if message.skip_reason in SKIP_REASONS:
            return SKIP_REASONS[message.skip_reason]
        return "Its notification was cancelled before this message was handed to a provider."
    if status == "failed":
        said = ERROR_CLASSES.get(message.error_class or "", "It failed to send.")
        return f"{said} It is in the dead-letter queue."
    if status in RECEIPT_OUTCOMES:
        return RECEIPT_OUTCOMES[status]
    if status == "retrying":
        return (
            "The last attempt failed and Herald will try again"
            " (the timeline shows each attempt and its error)."
        )
    if status == "queued" and message.next_attempt_at is not None and message.attempts == 0:
        return "It is waiting for its turn: held by a pause, a schedule or your sending rate."
    return None


def why_refused(notification: Notification) -> str | None:
    """Why a broadcast was refused whole, in plain words; None for one that was not."""
    reason = (
        notification.problems.get("quota_exceeded") if notification.status == "refused" else None
    )
    if not isinstance(reason, dict):
        return None
    return (
        f"{reason.get('detail', 'It was larger than what was left of the quota.')} It was set "
        "to be refused whole rather than sent up to the quota (your settings, or this "
        "notification's on_quota_exceeded): no message was written or counted, and the quota "
        "is as it was."
    )


@dataclass(frozen=True)
class TimelineEntry:
    at: datetime
    title: str
    detail: str = ""
    tone: str = "neutral"  # neutral | good | warn | bad: the dot's colour
    facts: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class MessagePage:
    message: Message
    recipient: str | None
    notification: Notification
    attempts: list[Attempt]
    events: list[MessageEvent]
    content: dict[str, Any] | None  # as rendered and stored; None when never rendered
    locale: str | None
    timeline: list[TimelineEntry]
    why_not_sent: str | None


async def message_page(
    session: AsyncSession, *, tenant_id: uuid.UUID, mode: str, message_id: uuid.UUID
) -> MessagePage | None:
    """One message of the tenant's mode with its notification, attempts, receipt events,
    rendered content and timeline; None when the tenant has no such message in `mode`."""
    message = await session.scalar(
        select(Message).where(
            Message.tenant_id == tenant_id, Message.mode == mode, Message.id == message_id
        )
    )
    if message is None:
        return None
    notification = await session.scalar(
        select(Notification).where(
            Notification.tenant_id == tenant_id, Notification.id == message.notification_id
        )
    )
    if notification is None:  # deleted with its messages; not reachable in practice
        return None
    recipient = await session.scalar(
        select(Recipient.external_id).where(
            Recipient.tenant_id == tenant_id, Recipient.id == message.recipient_id
        )
    )
    attempts = list(
        (
            await session.scalars(
                select(Attempt)
                .where(Attempt.tenant_id == tenant_id, Attempt.message_id == message.id)
                .order_by(Attempt.id)
                .limit(1_000)
            )
        ).all()
    )
    events = await receipts.timeline(session, message.id)
    render = None
    if message.render_id is not None:
        render = await session.scalar(
            select(Render).where(Render.tenant_id == tenant_id, Render.id == message.render_id)
        )
    return MessagePage(
        message=message,
        recipient=recipient,
        notification=notification,
        attempts=attempts,
        events=events,
        content=render.content if render is not None else None,
        locale=render.locale if render is not None else None,
        timeline=timeline(message, notification, attempts, events),
        why_not_sent=why_not_sent(message),
    )


def timeline(
    message: Message,
    notification: Notification,
    attempts: list[Attempt],
    events: list[MessageEvent],
) -> list[TimelineEntry]:
    """What happened to the message, oldest first: accepted, dispatched (or skipped), each
    attempt, sent, each receipt event, and how it ended."""
    entries = [
        TimelineEntry(
            notification.created_at,
            "Accepted",
            f"The API accepted notification {notification.id} "
            f"(template {notification.template_key}, {notification.priority} priority).",
        )
    ]
    if message.status == "skipped":
        entries.append(
            TimelineEntry(
                message.created_at,
                f"Skipped: {(message.skip_reason or 'no reason').replace('_', ' ')}",
                why_not_sent(message) or "",
                "warn",
            )
        )
    else:
        entries.append(
            TimelineEntry(
                message.created_at,
                "Dispatched",
                f"Rendered and queued for {message.channel} to {message.address}.",
            )
        )
    for attempt in attempts:
        facts = {"Provider": attempt.provider, "Latency": f"{attempt.latency_ms} ms"}
        if attempt.status_code is not None:
            facts["Status code"] = str(attempt.status_code)
        if attempt.error_class:
            facts["Error class"] = attempt.error_class
        ok = attempt.outcome == "sent"
        entries.append(
            TimelineEntry(
                attempt.started_at,
                f"Attempt {attempt.n}: {attempt.outcome.replace('_', ' ')}",
                attempt.error or "",
                "good" if ok else "bad",
                facts,
            )
        )
    if message.sent_at is not None and not attempts:
        entries.append(TimelineEntry(message.sent_at, "Sent", f"Handed to {message.provider}."))
    for event in events:
        entries.append(
            TimelineEntry(
                event.occurred_at,
                f"Receipt: {event.kind}",
                "" if event.applied else "Recorded; it did not change the message's status.",
                "bad" if event.kind in RECEIPT_OUTCOMES else "good",
                {"Received": event.created_at.strftime("%d %b %Y %H:%M:%S UTC")},
            )
        )
    ended = message.updated_at or message.created_at
    if message.status == "failed":
        entries.append(
            TimelineEntry(
                ended,
                "Dead-lettered",
                f"Moved to the dead-letter queue ({message.error_class or 'no'} error class):"
                " no further attempt unless it is replayed.",
                "bad",
            )
        )
    elif message.status == "cancelled":
        entries.append(TimelineEntry(ended, "Cancelled", why_not_sent(message) or "", "warn"))
    elif (
        message.status == "retrying"
        and message.next_attempt_at is not None
        and message.next_attempt_at.year < 9999  # held: 'infinity'
    ):
        entries.append(
            TimelineEntry(message.next_attempt_at, "Next attempt", "Scheduled retry.", "warn")
        )
    return sorted(entries, key=lambda entry: entry.at)
