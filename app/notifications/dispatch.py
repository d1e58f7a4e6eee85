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

A broadcast larger than what is left of a blocking plan's quota goes out up to the quota,
or, when the tenant or the notification chose `refuse` (app/usage/overflow.py), is counted
and held whole before its first page and, when it does not fit, ends `refused` with no
message written (`_hold_audience`).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import msgspec
from opentelemetry.trace import SpanKind
from sqlalchemy import ARRAY, Uuid, any_, bindparam, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.categories import service as categories
from app.categories.service import CategoryView
from app.db import utcnow
from app.delivery import outbox
from app.ids import uuid7, uuid7s
from app.notifications import bulk, expansion
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
from app.usage import overflow, quota, recording
from app.usage.meter import Meter
from app.usage.quota import QuotaExceeded
from app.webhooks.events import Event
from app.webhooks.events import record as record_events

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
    # When the batches were paced from (their messages' next_attempt_at was set from it).
    paced_from: datetime | None = None

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
        now = now or self.paced_from or utcnow()
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
    session: AsyncSession,
    *,
    notification_id: uuid.UUID,
    renderer: Renderer,
    enqueuer: outbox.Outbox | None = None,
    clock: Callable[[], float] = time.monotonic,
    run_seconds: float = expansion.RUN_SECONDS,
    meter: Meter | None = None,
) -> Dispatched:
    """Write the notification's messages (once) and return its queued messages in batches.

    An audience's dispatch (expansion.py) commits and enqueues as it goes, through
    `enqueuer`, and hands back only the job that goes on with it, if one must.

    The messages written are noted for usage (app/usage/recording.py): the caller counts
    them after its commit; an audience's dispatch, which commits as it goes, counts them in
    `meter` after each of its commits."""
    # The row lock serialises dispatch with cancellation of the same notification.
    notification = await session.scalar(
        select(Notification).where(Notification.id == notification_id).with_for_update()
    )
    # Cancelled, or failed part-way: what it still holds is never sent.
    if (
        notification is not None
        and notification.status in ("cancelled", "failed")
        and notification.releasing
    ):
        await _cancel_held(session, notification)
        # It writes no more: what its audience still holds of the quota goes back.
        recording.note_done(
            session, tenant_id=notification.tenant_id, notification_id=notification.id
        )
        return Dispatched([])
    # Paused: resuming it enqueues its dispatch again (queries.resume).
    if notification is None or notification.status in ("cancelled", "failed", "paused", "refused"):
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
        tenant = await get_delivery_settings(session, tenant_id=notification.tenant_id)
        if expansion.is_audience(notification):
            if enqueuer is None:
                raise ValueError("an audience's dispatch needs an enqueuer: it enqueues as it goes")
            later = await _expand(
                session, notification, renderer, tenant, enqueuer, clock, run_seconds, meter
            )
            return Dispatched([], notification.priority, later)
        later = None
        if notification.status == "accepted":
            later = await _fan_out(session, notification, renderer, tenant)
        batches = await queued_batches(session, notification)
        span.set_attribute("herald.messages", sum(len(b.message_ids) for b in batches))
        limits = limits_for(tenant.plan)
        done = Dispatched(
            batches,
            notification.priority,
            later,
            Pace(limits.send_rate, limits.send_burst),
            paced_from=utcnow(),
        )
        await _stamp_deferred(session, done.jobs(notification.id))
        return done


# A deferred batch's messages are due when its job is: without it the sweeper, finding them
# queued with no due time a minute after they were written, would take their deliveries
# for lost and enqueue them at once, ahead of the pace.
_STAMP = text(
    """
    UPDATE messages AS m SET next_attempt_at = d.at
      FROM unnest(CAST(:ids AS uuid[]), CAST(:ats AS timestamptz[])) AS d(id, at)
     WHERE m.id = d.id AND m.status = 'queued'
    """
)


async def _stamp_deferred(session: AsyncSession, jobs: list[outbox.Job]) -> None:
    ids: list[uuid.UUID] = []
    ats: list[datetime] = []
    for job in jobs:
        if job.function == "deliver" and job.defer_until is not None:
            for message_id in job.args[0]:
                ids.append(uuid.UUID(message_id))
                ats.append(job.defer_until)
    if ids:
        await session.execute(_STAMP, {"ids": ids, "ats": ats})


async def _sources(
    session: AsyncSession, notification: Notification
) -> tuple[TemplateVersion, CategoryView] | None:
    """The notification's template version and category; None (and the notification
    failed) when either was deleted after it was accepted."""
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
    return template, category


async def _fan_out(
    session: AsyncSession,
    notification: Notification,
    renderer: Renderer,
    tenant: DeliverySettings,
) -> datetime | None:
    """Write what can be rendered now; the time to carry on when the budget ran out."""
    found = await _sources(session, notification)
    if found is None:  # failed: it will write nothing, its intake hold goes back
        recording.note_done(
            session, tenant_id=notification.tenant_id, notification_id=notification.id
        )
        return None
    template, category = found
    wanted = notification.audience["recipients"]
    people = await recipients.get_by_external_ids(
        session,
        tenant_id=notification.tenant_id,
        mode=notification.mode,
        external_ids=wanted,
        for_delivery=True,
    )
    wait = await _write(session, notification, renderer, tenant, template, category, people)
    # This run finished its work: a later failure starts counting afresh (failures.py).
    notification.dispatch_attempts = 0
    notification.dispatch_error = None
    if wait is not None:
        notification.dispatch_after = utcnow() + max(MIN_DEFER, timedelta(seconds=wait))
        return notification.dispatch_after
    found_ids = {p.external_id for p in people}
    unknown = [external_id for external_id in wanted if external_id not in found_ids]
    recording.note_done(session, tenant_id=notification.tenant_id, notification_id=notification.id)
    notification.status = "dispatched"
    notification.dispatched_at = utcnow()
    notification.dispatch_after = None
    if unknown:
        notification.problems = {"unknown_recipients": unknown[:100]}
    return None


async def _write(
    session: AsyncSession,
    notification: Notification,
    renderer: Renderer,
    tenant: DeliverySettings,
    template: TemplateVersion,
    category: CategoryView,
    people: Sequence[Recipient],
    *,
    topic: str | None = None,
    held: bool = False,
    queued_out: Counter[str] | None = None,
) -> float | None:
    """Plan, render and write the messages of `people` that an earlier run did not write;
    the seconds to wait when the render budget ran out part-way. `held`: written to be
    released a window at a time (expansion.py)."""
    plans = await recipients.plan_deliveries(
        session,
        tenant_id=notification.tenant_id,
        mode=notification.mode,
        recipients=list(people),
        channels=notification.channels,
        category=category,
        # drop_noncritical skips channels here; pause is applied at the delivery claim.
        kill_switches=tenant.kill_switches,
        topic=topic,
    )
    written = await _written(session, notification.id, [p.id for p in people])
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
        tenant_id=notification.tenant_id,
        mode=notification.mode,
        plan=tenant.plan,
        template=template,
        data=notification.data,
        jobs=work.jobs,
    )
    renders, messages = work.rows(notification, rendering.outcomes)
    if held:
        for message in messages:
            if message["status"] == "queued":
                message["next_attempt_at"] = "infinity"
    await bulk.insert_renders(session, renders)
    await bulk.insert(session, bulk.INSERT_MESSAGES, bulk.MESSAGE_COLUMNS, messages)
    # Only rows no earlier run wrote are here (`written` above, under the notification's
    # lock): each is counted once. A list's messages use up the hold its intake took; an
    # audience's page is held and counted by the caller (`queued_out`).
    queued = Counter(m["channel"] for m in messages if m["status"] == "queued")
    if queued_out is not None:
        queued_out.update(queued)
    else:
        recording.note(
            session,
            tenant_id=notification.tenant_id,
            mode=notification.mode,
            notification_id=notification.id,
            queued=queued,
            held=True,
        )
    return rendering.wait


async def _expand(
    session: AsyncSession,
    notification: Notification,
    renderer: Renderer,
    tenant: DeliverySettings,
    enqueuer: outbox.Outbox,
    clock: Callable[[], float],
    run_seconds: float,
    meter: Meter | None = None,
) -> datetime | None:
    """Expand an audience page by page and release its held messages at the tenant's pace,
    committing each step, for up to `run_seconds`; when the next run is due (None: nothing
    left for one: done, paused, cancelled, or another run holds it)."""
    if notification.releasing and (notification.dispatch_after or utcnow()) > utcnow():
        return None  # a run holds it: its lease (dispatch_after) has not run out
    topic = expansion.audience_of(notification).topic
    choices: list[expansion.ContentChoice] | None = None
    sources: tuple[TemplateVersion, CategoryView] | None = None
    if notification.status == "accepted":
        sources = await _sources(session, notification)
        if sources is None:
            return None
        if not await _hold_audience(session, notification, tenant, meter):
            return None  # refused whole: nothing to write
        template = sources[0]
        if not expansion.personalised(
            template, notification.channels, notification.locale, tenant.default_locale
        ):
            shared = await expansion.shared_content(
                session,
                notification,
                template,
                renderer,
                tenant,
                await _shared_renders(session, notification.id),
            )
            if shared.wait is not None:
                return _defer(notification, shared.wait)
            choices = shared.choices
    rate = limits_for(tenant.plan).send_rate
    window, every = expansion.tick(rate)
    last_release: float | None = None
    deadline = clock() + run_seconds
    released: list[uuid.UUID] = []
    released_through: uuid.UUID | None = None  # the run's last release ended here
    next_release = clock()
    while True:
        jobs: list[outbox.Job] = []
        if notification.status == "accepted" and sources is not None:
            wait = await _expand_page(
                session, notification, renderer, tenant, sources, choices, topic, meter
            )
            if wait is not None:
                await session.commit()
                await recording.record_committed(session, meter)
                return _defer(notification, wait)
        if notification.releasing and clock() >= next_release:
            if await expansion.still_queued(session, released) <= BACKLOG_SHARE * len(released):
                now = clock()
                size = (
                    window
                    if last_release is None
                    else expansion.window_after(rate, now - last_release)
                )
                last_release = now
                window_out = await expansion.release(
                    session, notification, size, after=released_through
                )
                released, jobs = window_out.ids, window_out.jobs
                if released:
                    released_through = max(released)
                elif released_through is not None:
                    # A later page's ids are above any earlier release's (ids follow the
                    # clock); one look from the start before calling it done, for a message
                    # a release passed by while another transaction held it.
                    released_through = None
                elif notification.status == "dispatched":
                    notification.releasing = False  # the last is out
            # On a fixed cadence: the time a release takes is not added to every period,
            # which would hold the tenant below its rate. A release held up (by a page being
            # written) makes up for it with a larger window (window_after), up to
            # MAX_WINDOW, not with releases in a row.
            next_release = max(next_release + every, clock())
        done = not notification.releasing and notification.status != "accepted"
        over = clock() >= deadline
        # The lease: the relay leaves the notification to this run until then.
        lease = timedelta(seconds=run_seconds + LEASE_SLACK)
        # Handing over, due now: the relay enqueues the next run if its job is lost.
        notification.dispatch_after = None if done else utcnow() if over else utcnow() + lease
        await session.commit()
        await recording.record_committed(session, meter)
        await enqueuer.enqueue_after_commit(jobs)
        if done:
            return None
        if over:
            return utcnow()  # the rest in a new job, behind what was queued meanwhile
        if notification.status != "accepted":
            await asyncio.sleep(max(0.0, next_release - clock()))
        relocked = await session.scalar(
            select(Notification)
            .where(Notification.id == notification.id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        if relocked is None or relocked.status not in ("accepted", "dispatched"):
            # Cancelled: the job the cancel enqueued cancels the held messages, and does so
            # only while the notification is `releasing` (the relay enqueues that job again
            # if it is lost, by `releasing` and the cancel's `dispatch_after`): both stay as
            # the cancel left them.
            if relocked is not None and relocked.status != "cancelled":
                relocked.dispatch_after = None
                if relocked.status != "paused":
                    relocked.releasing = False
            await session.commit()
            return None
        notification = relocked


CANCEL_PAGE = 10_000  # held messages of a cancelled audience cancelled per transaction


async def _cancel_held(session: AsyncSession, notification: Notification) -> None:
    """Cancel the held messages of a cancelled (or failed) broadcast, a page per transaction."""
    notification_id = notification.id
    while await expansion.cancel_held(session, notification_id, CANCEL_PAGE):
        await session.commit()
    relocked = await session.get(
        Notification, notification_id, with_for_update=True, populate_existing=True
    )
    if relocked is not None:
        relocked.releasing = False
        relocked.dispatch_after = None


LEASE_SLACK = 30.0  # seconds a run's lease outlasts its time slice
BACKLOG_SHARE = expansion.BACKLOG_SHARE
PERSONAL_PAGE = 500  # recipients per page when each is rendered for


def _defer(notification: Notification, wait: float) -> datetime:
    notification.dispatch_after = utcnow() + max(MIN_DEFER, timedelta(seconds=wait))
    return notification.dispatch_after


async def _expand_page(
    session: AsyncSession,
    notification: Notification,
    renderer: Renderer,
    tenant: DeliverySettings,
    sources: tuple[TemplateVersion, CategoryView],
    choices: list[expansion.ContentChoice] | None,
    topic: str | None,
    meter: Meter | None = None,
) -> float | None:
    """Write the next page (in SQL, or per recipient when the content is personalised);
    the render budget's wait when it ran out part-way (the cursor stays)."""
    notification.releasing = True
    notification.dispatch_attempts = 0
    notification.dispatch_error = None
    queued: Counter[str] = Counter()
    if choices is not None:
        page = await expansion.write_page(session, notification, choices, tenant)
        queued.update(page.queued_by_channel)
        await _meter_page(session, notification, tenant, queued, meter)
        last = page.last
    else:
        people = await expansion.next_people(session, notification, PERSONAL_PAGE)
        wait = None
        if people:
            template, category = sources
            wait = await _write(
                session,
                notification,
                renderer,
                tenant,
                template,
                category,
                people,
                topic=topic,
                held=True,
                queued_out=queued,
            )
        await _meter_page(session, notification, tenant, queued, meter)
        if wait is not None:
            return wait
        last = people[-1].id if people else None
        if last is not None:
            notification.expansion_cursor = last
    if last is None:
        notification.status = "dispatched"
        notification.dispatched_at = utcnow()
        recording.note_done(
            session, tenant_id=notification.tenant_id, notification_id=notification.id
        )
    return None


async def _hold_audience(
    session: AsyncSession,
    notification: Notification,
    tenant: DeliverySettings,
    meter: Meter | None,
) -> bool:
    """Under `refuse`, before the broadcast's first page: count its audience and hold it
    whole against the quota; False when it does not fit, the notification then refused.

    Test mode, a plan that bills its overage, channels without a quota and metering off
    are never refused. Counted once: `quota_held` is committed with the first page (or the
    render budget's deferral), and a broadcast whose first page is written is past
    refusing (its pages go on up to the quota)."""
    if (
        meter is None
        or notification.mode != "live"
        or notification.quota_held
        or notification.expansion_cursor is not None
        or overflow.chosen(notification.on_quota_exceeded, tenant.on_quota_exceeded) != "refuse"
    ):
        return True
    bound = quota.audience_bound(tenant.plan, notification.channels)
    if bound is None:
        return True
    recipients = await expansion.audience_size(session, notification, bound)
    over = await quota.hold_audience(
        session,
        meter,
        tenant_id=notification.tenant_id,
        plan=tenant.plan,
        notification_id=notification.id,
        channels=notification.channels,
        recipients=recipients,
    )
    if over is None:
        notification.quota_held = True
        return True
    await _refuse(session, notification, over, recipients, at_least=recipients >= bound)
    return False


async def _refuse(
    session: AsyncSession,
    notification: Notification,
    over: QuotaExceeded,
    recipients: int,
    *,
    at_least: bool,
) -> None:
    """End the notification `refused` for its quota, with the reason where the tenant reads
    it (GET /v1/notifications/{id}, the dashboard) and the `notification.refused` event."""
    resets_at = over.resets_at.isoformat().replace("+00:00", "Z")
    size = f"at least {recipients}" if at_least else str(recipients)
    reason = {
        "channel": over.channel,
        "plan": over.plan,
        "remaining": over.left,
        "recipients": recipients,
        "resets_at": resets_at,
        "detail": (
            f"The audience ({size} recipients) is larger than the {over.left} {over.channel} "
            f"message(s) left of the {over.plan} plan's monthly quota; nothing was sent. "
            f"The quota resets at {resets_at}."
        ),
    }
    notification.status = "refused"
    notification.problems = {**notification.problems, "quota_exceeded": reason}
    notification.dispatch_attempts = 0
    notification.dispatch_error = None
    notification.dispatch_after = None
    notification.releasing = False
    await record_events(
        session,
        [
            Event(
                tenant_id=notification.tenant_id,
                mode=notification.mode,
                type="notification.refused",
                ordering_key=str(notification.id),
                data={
                    "notification_id": str(notification.id),
                    "reason": "quota_exceeded",
                    **{k: v for k, v in reason.items() if k != "detail"},
                },
            )
        ],
        utcnow(),
    )


async def _meter_page(
    session: AsyncSession,
    notification: Notification,
    tenant: DeliverySettings,
    queued: Counter[str],
    meter: Meter | None,
) -> None:
    """Hold a broadcast page's messages against the tenant's quotas, skip (reason `quota`)
    what a blocking plan's quota cannot hold, and note the rest to count after the commit."""
    if meter is not None and notification.mode == "live" and queued:
        over = await quota.cut(
            session,
            meter,
            tenant_id=notification.tenant_id,
            plan=tenant.plan,
            notification_id=notification.id,
            queued=dict(queued),
            held=notification.quota_held,
        )
        for channel, excess in over.items():
            queued[channel] -= await expansion.skip_over_quota(
                session, notification.id, channel, excess
            )
    recording.note(
        session,
        tenant_id=notification.tenant_id,
        mode=notification.mode,
        notification_id=notification.id,
        queued=queued,
        held=True,
    )


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


async def _written(
    session: AsyncSession, notification_id: uuid.UUID, recipient_ids: list[uuid.UUID]
) -> set[tuple[Any, ...]]:
    """(recipient, channel, address) of the messages an earlier run wrote for these
    recipients (the unique key's index serves it)."""
    rows = await session.execute(
        select(Message.recipient_id, Message.channel, Message.address).where(
            Message.notification_id == notification_id,
            # One array parameter: the statement is the same whatever the number of ids.
            Message.recipient_id == any_(bindparam("ids", recipient_ids, type_=ARRAY(Uuid))),
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
        "next_attempt_at": None,
    }


def queued_statement(notification_id: uuid.UUID) -> Any:
    return (
        select(Message.id, Message.channel)
        .where(Message.notification_id == notification_id, Message.status == "queued")
        .order_by(Message.channel, Message.id)
    )


async def queued_batches(session: AsyncSession, notification: Notification) -> list[DeliveryBatch]:
    rows = await session.execute(queued_statement(notification.id))
    by_channel: dict[str, list[uuid.UUID]] = defaultdict(list)
    for message_id, channel in rows.all():
        by_channel[channel].append(message_id)
    return [
        DeliveryBatch(channel, notification.priority, chunk)
        for channel, ids in by_channel.items()
        for chunk in bulk.chunks(ids, outbox.BATCH_SIZE)
    ]
