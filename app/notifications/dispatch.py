"""Dispatch: turn one accepted notification into rendered messages, ready for delivery.

Decided once, here: who the audience is, which (recipient, channel, address) pairs may be
sent to (preferences, suppressions, missing addresses), and what each says. A recipient
gets the content of the first locale the template has among the notification's locale, the
recipient's and the tenant's default (each before its language), else the template's own.
Content is rendered once per (channel, content used) unless the template reads
`recipient`, in which case per recipient. Messages are written with bulk inserts;
re-running dispatch after a crash inserts nothing twice and hands back the same delivery
batches.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from opentelemetry.trace import SpanKind
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import utcnow
from app.ids import uuid7
from app.notifications.models import Message, Notification
from app.observability.tracing import parent_context, tracer
from app.recipients import service as recipients
from app.recipients.models import Recipient
from app.templates.models import TemplateVersion
from app.templates.rendering import RenderFailed, is_personalised, render
from app.templates.service import get_template
from app.tenants.settings import get_delivery_settings

DELIVERY_BATCH_SIZE = 100
INSERT_CHUNK = 5_000  # rows per INSERT: each column is one array parameter


@dataclass(frozen=True)
class DeliveryBatch:
    channel: str
    priority: str
    message_ids: list[uuid.UUID]


async def dispatch(session: AsyncSession, *, notification_id: uuid.UUID) -> list[DeliveryBatch]:
    """Write the notification's messages (once) and return its queued messages in batches."""
    # The row lock serialises dispatch with cancellation of the same notification.
    notification = await session.scalar(
        select(Notification).where(Notification.id == notification_id).with_for_update()
    )
    if notification is None or notification.status in ("cancelled", "failed"):
        return []
    with tracer().start_as_current_span(
        "herald.dispatch",
        context=parent_context(notification.trace_context),
        kind=SpanKind.CONSUMER,
        attributes={
            "herald.notification_id": str(notification.id),
            "herald.tenant_id": str(notification.tenant_id),
            "herald.template": notification.template_key,
        },
    ) as span:
        if notification.status == "accepted":
            await _fan_out(session, notification)
        batches = await queued_batches(session, notification)
        span.set_attribute("herald.messages", sum(len(b.message_ids) for b in batches))
        return batches


async def _fan_out(session: AsyncSession, notification: Notification) -> None:
    tenant_id, mode = notification.tenant_id, notification.mode
    template = await get_template(
        session,
        tenant_id=tenant_id,
        mode=mode,
        key=notification.template_key,
        version=notification.template_version,
    )
    category = await recipients.get_category(
        session, tenant_id=tenant_id, mode=mode, key=notification.category
    )
    if template is None or category is None:
        missing = "template" if template is None else "category"
        notification.status = "failed"
        notification.problems = {missing: "deleted after the notification was accepted"}
        return
    notification.critical = category.critical
    wanted = notification.audience["recipients"]
    people = await recipients.get_by_external_ids(
        session, tenant_id=tenant_id, mode=mode, external_ids=wanted, for_delivery=True
    )
    tenant = await get_delivery_settings(session, tenant_id=tenant_id)
    plans = await recipients.plan_deliveries(
        session,
        tenant_id=tenant_id,
        mode=mode,
        recipients=people,
        channels=notification.channels,
        category=category,
        # drop_noncritical skips channels here; pause is applied at the delivery claim.
        kill_switches=tenant.kill_switches,
    )
    # Rendering is CPU work (up to 100 ms a channel): off the event loop, like preview.
    renders, messages = await asyncio.to_thread(
        _compose, notification, template, {p.id: p for p in people}, plans, tenant.default_locale
    )
    await _insert_renders(session, renders)
    await _insert(session, _INSERT_MESSAGES, _MESSAGE_COLUMNS, messages)
    found = {p.external_id for p in people}
    unknown = [external_id for external_id in wanted if external_id not in found]
    notification.status = "dispatched"
    notification.dispatched_at = utcnow()
    if unknown:
        notification.problems = {"unknown_recipients": unknown[:100]}


def _compose(
    notification: Notification,
    template: TemplateVersion,
    people: dict[uuid.UUID, Recipient],
    plans: Sequence[recipients.PlannedDelivery],
    default_locale: str | None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Render content and build message rows; one render per (channel, content used) when
    possible, so recipients in fr-CA and fr-FR share the render of the template's `fr`."""
    renders: list[dict[str, Any]] = []
    messages: list[dict[str, Any]] = []
    shared: dict[tuple[str, str | None], uuid.UUID | RenderFailed] = {}
    for plan in plans:
        row = _message_row(notification, plan)
        messages.append(row)
        if plan.skip_reason is not None:
            continue
        person = people[plan.recipient_id]
        locales = (notification.locale, person.locale, default_locale)
        if is_personalised(template, plan.channel, locales[0], locales[1:]):
            outcome = _render(notification, template, plan.channel, locales, person, renders)
        else:
            found = template.content_for(plan.channel, *locales)
            key = (plan.channel, found.path if found is not None else None)
            if key not in shared:
                shared[key] = _render(notification, template, plan.channel, locales, None, renders)
            outcome = shared[key]
        if isinstance(outcome, RenderFailed):
            row.update(
                status="failed", error_class="render", last_error=f"{outcome.field}: {outcome}"
            )
        else:
            row["render_id"] = outcome
    return renders, messages


def _render(
    notification: Notification,
    template: TemplateVersion,
    channel: str,
    locales: tuple[str | None, ...],
    person: Recipient | None,
    renders: list[dict[str, Any]],
) -> uuid.UUID | RenderFailed:
    """Render for the first of `locales` the template has; the row records whose content."""
    context = recipients.template_context(person) if person is not None else None
    try:
        content = render(
            template,
            channel,
            locale=locales[0],
            fallback=locales[1:],
            data=notification.data,
            recipient=context,
        )
    except RenderFailed as failed:
        return failed
    found = template.content_for(channel, *locales)
    locale = found.locale if found is not None else None
    render_id = uuid7()
    renders.append(
        {
            "id": render_id,
            "notification_id": notification.id,
            "tenant_id": notification.tenant_id,
            "channel": channel,
            "locale": locale,
            "content": msgspec.to_builtins(content),
        }
    )
    return render_id


def _message_row(notification: Notification, plan: recipients.PlannedDelivery) -> dict[str, Any]:
    return {
        "id": uuid7(),
        "notification_id": notification.id,
        "tenant_id": notification.tenant_id,
        "mode": notification.mode,
        "recipient_id": plan.recipient_id,
        "channel": plan.channel,
        "address": plan.address,
        "render_id": None,
        "status": "skipped" if plan.skip_reason else "queued",
        "skip_reason": plan.skip_reason,
        "error_class": None,
        "last_error": None,
        "created_at": utcnow(),
    }


# Arrays bound once per statement: a multi-row VALUES would be compiled anew for every
# batch size, which costs more than the insert itself.
_INSERT_RENDERS = text(
    """
    INSERT INTO renders (id, notification_id, tenant_id, channel, locale, content)
    SELECT id, notification_id, tenant_id, channel, locale, CAST(content AS jsonb)
      FROM unnest(CAST(:id AS uuid[]), CAST(:notification_id AS uuid[]),
                  CAST(:tenant_id AS uuid[]), CAST(:channel AS text[]), CAST(:locale AS text[]),
                  CAST(:content AS text[]))
           AS r(id, notification_id, tenant_id, channel, locale, content)
    """
)
_INSERT_MESSAGES = text(
    """
    INSERT INTO messages (id, notification_id, tenant_id, mode, recipient_id, channel, address,
                          render_id, status, skip_reason, error_class, last_error, created_at)
    SELECT * FROM unnest(CAST(:id AS uuid[]), CAST(:notification_id AS uuid[]),
                         CAST(:tenant_id AS uuid[]), CAST(:mode AS text[]),
                         CAST(:recipient_id AS uuid[]),
                         CAST(:channel AS text[]), CAST(:address AS text[]),
                         CAST(:render_id AS uuid[]), CAST(:status AS text[]),
                         CAST(:skip_reason AS text[]), CAST(:error_class AS text[]),
                         CAST(:last_error AS text[]), CAST(:created_at AS timestamptz[]))
    ON CONFLICT DO NOTHING
    """
)
_RENDER_COLUMNS = ("id", "notification_id", "tenant_id", "channel", "locale", "content")
_MESSAGE_COLUMNS = (
    "id",
    "notification_id",
    "tenant_id",
    "mode",
    "recipient_id",
    "channel",
    "address",
    "render_id",
    "status",
    "skip_reason",
    "error_class",
    "last_error",
    "created_at",
)


async def _insert_renders(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    rows = [{**row, "content": msgspec.json.encode(row["content"]).decode()} for row in rows]
    await _insert(session, _INSERT_RENDERS, _RENDER_COLUMNS, rows)


async def _insert(
    session: AsyncSession, statement: Any, columns: Sequence[str], rows: list[dict[str, Any]]
) -> None:
    for chunk in _chunks(rows, INSERT_CHUNK):
        await session.execute(statement, {name: [row[name] for row in chunk] for name in columns})


async def queued_batches(session: AsyncSession, notification: Notification) -> list[DeliveryBatch]:
    rows = await session.execute(
        select(Message.id, Message.channel)
        .where(Message.notification_id == notification.id, Message.status == "queued")
        .order_by(Message.channel, Message.id)
    )
    by_channel: dict[str, list[uuid.UUID]] = defaultdict(list)
    for message_id, channel in rows.all():
        by_channel[channel].append(message_id)
    return [
        DeliveryBatch(channel, notification.priority, chunk)
        for channel, ids in by_channel.items()
        for chunk in _chunks(ids, DELIVERY_BATCH_SIZE)
    ]


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
