"""Dispatch: turn one accepted notification into rendered messages, ready for delivery.

Decided once, here: who the audience is, which (recipient, channel, address) pairs may be
sent to (preferences, suppressions, missing addresses), and what each says. A recipient
gets the content of the first locale the template has among the notification's locale, the
recipient's and the tenant's default (each before its language), else the template's own.
Content is rendered once per (channel, content used) unless the template reads
`recipient`, in which case per recipient. Messages are written with bulk inserts;
re-running dispatch after a crash inserts nothing twice and hands back the same delivery
batches.

Renders run in the render processes, within the tenant's render budget (Renderer). When
the budget runs out part-way, the messages rendered so far are written (and go out), the
notification stays `accepted` with `dispatch_after` set, and the caller dispatches it again
then: that run skips every (recipient, channel, address) already written and reuses the
shared renders already made, so a large personalised send proceeds at the tenant's pace.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import msgspec
from opentelemetry.trace import SpanKind
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.categories import service as categories
from app.db import utcnow
from app.delivery import outbox
from app.ids import uuid7, uuid7s
from app.notifications.models import Message, Notification, Render
from app.observability.tracing import parent_context, tracer
from app.recipients import service as recipients
from app.recipients.models import Recipient
from app.templates.isolation import RenderJob
from app.templates.models import TemplateVersion
from app.templates.pool import Outcome
from app.templates.renderer import Renderer
from app.templates.rendering import RenderFailed, is_personalised
from app.templates.service import get_template
from app.tenants.delivery_controls import DeliverySettings, get_delivery_settings
from app.tenants.plans import limits_for

INSERT_CHUNK = 5_000  # rows per INSERT: each column is one array parameter
UNPACED_CHANNELS = ("inbox",)  # Herald's own store: no tokens (app/delivery/routing.py)
MIN_DEFER = timedelta(seconds=1)  # a dispatch out of render budget waits at least this


@dataclass(frozen=True)
class DeliveryBatch:
    channel: str
    priority: str
    message_ids: list[uuid.UUID]


@dataclass(frozen=True)
class Pace:
    """The tenant's send rate (messages/s) and burst: no batch can go faster than these."""

    rate: float
    burst: int


@dataclass(frozen=True)
class Dispatched:
    batches: list[DeliveryBatch]  # the notification's queued messages, to enqueue
    priority: str = "normal"
    # Set when the render budget ran out part-way: dispatch the notification again then.
    later: datetime | None = None
    pace: Pace | None = None

    def jobs(self, notification_id: uuid.UUID, now: datetime | None = None) -> list[outbox.Job]:
        """What to enqueue once committed: the batches' deliveries, and the rest of the
        dispatch when the render budget ran out.

        The batches are due as the tenant's send bucket will have tokens for them: what the
        burst covers at once, each later batch when the rate has made tokens for the ones
        before it. Queued all at once, a tenant's thousands of batches would be ahead of
        every other tenant's work in the queue although the bucket lets them go only at its
        rate; due at their time, another tenant's batch queued meanwhile goes first. The
        inbox takes no tokens and is not paced.
        """
        now = now or utcnow()
        jobs = []
        ahead = 0  # metered messages of the batches before this one
        for batch in self.batches:
            at = None
            if self.pace is not None and batch.channel not in UNPACED_CHANNELS:
                wait = (ahead - self.pace.burst) / self.pace.rate
                at = now + timedelta(seconds=wait) if wait > 0 else None
                ahead += len(batch.message_ids)
            jobs.append(outbox.deliver(batch.priority, batch.message_ids, at))
        if self.later is not None:
            jobs.append(outbox.later_dispatch(notification_id, self.priority, self.later))
        return jobs


async def dispatch(
    session: AsyncSession, *, notification_id: uuid.UUID, renderer: Renderer
) -> Dispatched:
    """Write the notification's messages (once) and return its queued messages in batches."""
    # The row lock serialises dispatch with cancellation of the same notification.
    notification = await session.scalar(
        select(Notification).where(Notification.id == notification_id).with_for_update()
    )
    # Paused: resuming it enqueues its dispatch again (queries.resume).
    if notification is None or notification.status in ("cancelled", "failed", "paused"):
        return Dispatched([])
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
        later = None
        tenant = await get_delivery_settings(session, tenant_id=notification.tenant_id)
        if notification.status == "accepted":
            later = await _fan_out(session, notification, renderer, tenant)
        batches = await queued_batches(session, notification)
        span.set_attribute("herald.messages", sum(len(b.message_ids) for b in batches))
        limits = limits_for(tenant.plan)
        return Dispatched(
            batches, notification.priority, later, Pace(limits.send_rate, limits.send_burst)
        )


async def _fan_out(
    session: AsyncSession,
    notification: Notification,
    renderer: Renderer,
    tenant: DeliverySettings,
) -> datetime | None:
    """Write what can be rendered now; the time to carry on when the budget ran out."""
    tenant_id, mode = notification.tenant_id, notification.mode
    template = await get_template(
        session,
        tenant_id=tenant_id,
        mode=mode,
        key=notification.template_key,
        version=notification.template_version,
    )
    category = await categories.get_category(
        session, tenant_id=tenant_id, mode=mode, key=notification.category
    )
    if template is None or category is None:
        missing = "template" if template is None else "category"
        notification.status = "failed"
        notification.problems = {missing: "deleted after the notification was accepted"}
        return None
    notification.critical = category.critical
    wanted = notification.audience["recipients"]
    people = await recipients.get_by_external_ids(
        session, tenant_id=tenant_id, mode=mode, external_ids=wanted, for_delivery=True
    )
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
    written = await _written(session, notification.id)
    to_write = [p for p in plans if (p.recipient_id, p.channel, p.address) not in written]
    # Reading the template's sources (is it personalised?) is CPU work: off the event loop.
    work = await asyncio.to_thread(
        _Work.of,
        notification,
        template,
        {p.id: p for p in people},
        to_write,
        tenant.default_locale,
        await _shared_renders(session, notification.id),
    )
    rendering = await renderer.render(
        tenant_id=tenant_id,
        mode=mode,
        plan=tenant.plan,
        template=template,
        data=notification.data,
        jobs=work.jobs,
    )
    renders, messages = work.rows(notification, rendering.outcomes)
    await _insert_renders(session, renders)
    await _insert(session, _INSERT_MESSAGES, _MESSAGE_COLUMNS, messages)
    # This run finished its work: a later failure starts counting afresh (failures.py).
    notification.dispatch_attempts = 0
    notification.dispatch_error = None
    if rendering.wait is not None:
        notification.dispatch_after = utcnow() + max(MIN_DEFER, timedelta(seconds=rendering.wait))
        return notification.dispatch_after
    found = {p.external_id for p in people}
    unknown = [external_id for external_id in wanted if external_id not in found]
    notification.status = "dispatched"
    notification.dispatched_at = utcnow()
    notification.dispatch_after = None
    if unknown:
        notification.problems = {"unknown_recipients": unknown[:100]}
    return None


@dataclass
class _Work:
    """The renders a dispatch needs, and which message uses which: one job per (channel,
    content used) when the content does not read `recipient`, else one per recipient, so
    recipients in fr-CA and fr-FR share the render of the template's `fr`."""

    template: TemplateVersion
    plans: list[recipients.PlannedDelivery] = field(default_factory=list)
    uses: list[int | uuid.UUID | None] = field(default_factory=list)  # job, render, or none
    jobs: list[RenderJob] = field(default_factory=list)
    locales: list[str | None] = field(default_factory=list)  # whose content each job renders

    @classmethod
    def of(
        cls,
        notification: Notification,
        template: TemplateVersion,
        people: dict[uuid.UUID, Recipient],
        plans: Sequence[recipients.PlannedDelivery],
        default_locale: str | None,
        made: dict[tuple[str, str | None], uuid.UUID],
    ) -> _Work:
        work = cls(template)
        shared: dict[tuple[str, str | None], int | uuid.UUID] = dict(made)
        for plan in plans:
            work.plans.append(plan)
            if plan.skip_reason is not None:
                work.uses.append(None)
                continue
            person = people[plan.recipient_id]
            locales = (notification.locale, person.locale, default_locale)
            found = template.content_for(plan.channel, *locales)
            locale = found.locale if found is not None else None
            if is_personalised(template, plan.channel, locales[0], locales[1:]):
                context = recipients.template_context(person)
                work.uses.append(work._job(plan.channel, locales, locale, context))
                continue
            key = (plan.channel, locale)
            if key not in shared:
                shared[key] = work._job(plan.channel, locales, locale, None)
            work.uses.append(shared[key])
        return work

    def _job(
        self,
        channel: str,
        locales: tuple[str | None, ...],
        locale: str | None,
        recipient: dict[str, Any] | None,
    ) -> int:
        self.jobs.append(RenderJob(channel, locales[0], tuple(locales[1:]), recipient))
        self.locales.append(locale)
        return len(self.jobs) - 1

    def rows(
        self, notification: Notification, outcomes: Sequence[Outcome]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Render rows and message rows; a message whose render was not made yet (out of
        budget) is left for the next run."""
        renders: list[dict[str, Any]] = []
        render_ids: dict[int, uuid.UUID] = {}
        messages: list[dict[str, Any]] = []
        ids, now = iter(uuid7s(len(self.plans))), utcnow()  # for all rows at once
        for plan, use in zip(self.plans, self.uses, strict=True):
            row = _message_row(notification, plan, next(ids), now)
            if isinstance(use, uuid.UUID):
                row["render_id"] = use
            elif isinstance(use, int):
                outcome = outcomes[use]
                if outcome is None:
                    continue
                if isinstance(outcome, RenderFailed):
                    row.update(
                        status="failed",
                        error_class="render",
                        last_error=f"{outcome.field}: {outcome}",
                    )
                else:
                    if use not in render_ids:
                        render_ids[use] = uuid7()
                        renders.append(
                            {
                                "id": render_ids[use],
                                "notification_id": notification.id,
                                "tenant_id": notification.tenant_id,
                                "channel": plan.channel,
                                "locale": self.locales[use],
                                "content": msgspec.to_builtins(outcome),
                            }
                        )
                    row["render_id"] = render_ids[use]
            messages.append(row)
        return renders, messages


async def _written(session: AsyncSession, notification_id: uuid.UUID) -> set[tuple[Any, ...]]:
    """(recipient, channel, address) of the messages an earlier run wrote (the unique key's
    index serves it)."""
    rows = await session.execute(
        select(Message.recipient_id, Message.channel, Message.address).where(
            Message.notification_id == notification_id
        )
    )
    return {tuple(row) for row in rows.all()}


async def _shared_renders(
    session: AsyncSession, notification_id: uuid.UUID
) -> dict[tuple[str, str | None], uuid.UUID]:
    """Renders an earlier run made for everyone (channel, locale of the content used); a
    personalised content's renders are each one recipient's and are never shared."""
    if not await session.scalar(
        select(Render.id).where(Render.notification_id == notification_id).limit(1)
    ):
        return {}
    rows = await session.execute(
        select(Render.channel, Render.locale, Render.id)
        .where(Render.notification_id == notification_id)
        .order_by(Render.id)
    )
    made: dict[tuple[str, str | None], uuid.UUID] = {}
    for channel, locale, render_id in rows.all():
        made.setdefault((channel, locale), render_id)
    return made


def _message_row(
    notification: Notification,
    plan: recipients.PlannedDelivery,
    message_id: uuid.UUID,
    created_at: datetime,
) -> dict[str, Any]:
    return {
        "id": message_id,
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
        "created_at": created_at,
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
        for chunk in _chunks(ids, outbox.BATCH_SIZE)
    ]


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
