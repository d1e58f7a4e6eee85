"""Audiences: a notification to a topic, to everyone or to a filter, expanded inside PostgreSQL.

An audience may be a million recipients, so no step holds it in Python. Dispatch walks the
audience's recipients in keyset pages (`PAGE_SIZE`, in id order from `expansion_cursor`);
each page is one INSERT … SELECT that joins the page with the channels, the recipients'
addresses (one per push token), preferences (the category's and, sent to a topic, the
topic's), suppressions and the tenant's kill switches, and writes one message per
(recipient, channel, address), skipped with its reason or queued. The page's cursor is
written in the same transaction, so a run that stops part-way (a killed worker, the end of
its time slice) is resumed by the next from where it stopped; the unique key of messages
makes a repeated page write nothing.

Content is rendered once per (channel, content used) before the first page: which of the
template's locales a recipient gets is chosen in SQL, as `TemplateVersion.content_for`
chooses it (the notification's locale, else the recipient's, each before its language, else
the tenant's default, else the template's own). A template whose content reads `recipient`
is rendered per recipient instead, a page of recipients at a time.

Queued messages are written held (`next_attempt_at = 'infinity'`) and released a window at
a time: at most the tenant's send rate per second, and no new window while most of the last
one still waits in the queue. A tenant's million messages therefore never stand in the
shared queue ahead of another tenant's work: each release puts at most `MAX_WINDOW`
messages in line, after whatever other tenants queued meanwhile. Pausing stops releases
(held messages stay held); cancelling cancels them.

A run does both for up to `RUN_SECONDS`, then hands over to a new dispatch job (the relay
enqueues one when that is lost: `releasing` and `dispatch_after`).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import structlog
from sqlalchemy import (
    ARRAY,
    ColumnElement,
    DateTime,
    String,
    Text,
    Uuid,
    and_,
    bindparam,
    case,
    column,
    exists,
    func,
    literal,
    literal_column,
    or_,
    select,
    text,
    true,
    union_all,
    update,
    values,
)
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.audiences.schemas import Audience
from app.audiences.service import condition
from app.categories.rules import rules_for
from app.delivery import outbox
from app.ids import uuid7
from app.notifications import bulk
from app.notifications.models import Message, Notification
from app.recipients.models import (
    Preference,
    Recipient,
    Suppression,
    TopicMember,
    TopicPreference,
)
from app.recipients.planning import (
    DROP_NONCRITICAL,
    KILL_SWITCH,
    NO_ADDRESS,
    OPTED_OUT,
    SUPPRESSED,
)
from app.recipients.preferences import ALL_CATEGORIES
from app.templates.isolation import RenderJob
from app.templates.models import TemplateVersion
from app.templates.renderer import Renderer
from app.templates.rendering import RenderFailed, is_personalised
from app.tenants.delivery_controls import DeliverySettings

log = structlog.get_logger(__name__)

PAGE_SIZE = 5_000  # recipients per page: one INSERT … SELECT, one transaction
RUN_SECONDS = 20.0  # a dispatch run's share of a worker before it hands over
# Messages one release puts in the queue at most: another tenant's job waits behind up to
# one and a half windows (see BACKLOG_SHARE), a third of a second of two workers on two cores.
MAX_WINDOW = 500
MIN_TICK = 0.1  # seconds between releases at least
# A release waits while more than this share of the last window is still queued: the
# workers, not the tenant's rate, are the limit then, and more would only lengthen the line.
BACKLOG_SHARE = 0.5
# Held for release: never due (claims and the sweeper pass it by) until released.
HELD = literal_column("CAST('infinity' AS timestamptz)", DateTime(timezone=True))


def is_audience(notification: Notification) -> bool:
    """Sent to a topic, to everyone or to a filter (else to a list of recipients)."""
    return "recipients" not in notification.audience


def audience_of(notification: Notification) -> Audience:
    return msgspec.convert(notification.audience, Audience)


@dataclass(frozen=True)
class ContentChoice:
    """Recipients of `channel` whose locale is `tag` or a more specific one (`tag` None: any
    other) get this render (or this render's failure)."""

    channel: str
    tag: str | None
    render_id: uuid.UUID | None
    failure: str | None


@dataclass(frozen=True)
class SharedContent:
    """The renders an audience's messages use, by (channel, locale of the content)."""

    choices: list[ContentChoice]
    wait: float | None  # the render budget ran out: try again after this many seconds


def content_keys(
    template: TemplateVersion, channel: str, locale: str | None, default_locale: str | None
) -> list[tuple[str | None, str | None, tuple[str | None, ...]]]:
    """(tag recipients are matched on, locale of the content, locales to render it with).

    The notification's locale, when the template has it, is everyone's; otherwise each of
    the template's locales is its own recipients', and the rest get the default's."""
    if locale is not None:
        found = template.content_for(channel, locale)
        if found is not None and found.path != "content":
            return [(None, found.locale, (locale,))]
    keys: list[tuple[str | None, str | None, tuple[str | None, ...]]] = [
        (tag.lower(), tag, (tag,))
        for tag, contents in template.locales.items()
        if channel in contents
    ]
    fallback = template.content_for(channel, default_locale)
    keys.append((None, fallback.locale if fallback else None, (None, default_locale)))
    return keys


def personalised(
    template: TemplateVersion, channels: Sequence[str], locale: str | None, default: str | None
) -> bool:
    """Whether any content the audience may get reads `recipient`."""
    return any(
        is_personalised(template, channel, locales[0], locales[1:])
        for channel in channels
        for _, _, locales in content_keys(template, channel, locale, default)
    )


async def shared_content(
    session: AsyncSession,
    notification: Notification,
    template: TemplateVersion,
    renderer: Renderer,
    tenant: DeliverySettings,
    made: Mapping[tuple[str, str | None], uuid.UUID],
) -> SharedContent:
    """Render what is not rendered yet, once per (channel, content locale), and say which
    recipients get which."""
    keys = {
        channel: content_keys(template, channel, notification.locale, tenant.default_locale)
        for channel in notification.channels
    }
    wanted: dict[tuple[str, str | None], tuple[str | None, ...]] = {}
    for channel, found in keys.items():
        for _, content_locale, locales in found:
            if (channel, content_locale) not in made:
                wanted.setdefault((channel, content_locale), locales)
    jobs = [
        RenderJob(channel, locales[0], tuple(locales[1:]), None)
        for (channel, _), locales in wanted.items()
    ]
    rendering = await renderer.render(
        tenant_id=notification.tenant_id,
        mode=notification.mode,
        plan=tenant.plan,
        template=template,
        data=notification.data,
        jobs=jobs,
    )
    renders: dict[tuple[str, str | None], uuid.UUID | str] = dict(made)
    rows = []
    for key, outcome in zip(wanted, rendering.outcomes, strict=True):
        if outcome is None:
            continue
        if isinstance(outcome, RenderFailed):
            renders[key] = f"{outcome.field}: {outcome}"
            continue
        render_id = uuid7()
        renders[key] = render_id
        rows.append(
            {
                "id": render_id,
                "notification_id": notification.id,
                "tenant_id": notification.tenant_id,
                "channel": key[0],
                "locale": key[1],
                "content": msgspec.to_builtins(outcome),
            }
        )
    await bulk.insert_renders(session, rows)
    if len(renders) < len(made) + len(wanted):
        return SharedContent([], rendering.wait or 1.0)
    choices = []
    for channel, found in keys.items():
        for tag, content_locale, _ in found:
            made_or_failed = renders[(channel, content_locale)]
            if isinstance(made_or_failed, str):
                choices.append(ContentChoice(channel, tag, None, made_or_failed))
            else:
                choices.append(ContentChoice(channel, tag, made_or_failed, None))
    return SharedContent(choices, None)


@dataclass(frozen=True)
class Page:
    last: uuid.UUID | None  # the page's last recipient; None: the audience is done
    queued: int
    skipped: int
    queued_by_channel: dict[str, int] = field(default_factory=dict)


def _targets(page: Any, channels: list[str]) -> Any:
    """(recipient, locale, channel, address) for each channel's addresses, '' for none."""
    chosen = (
        func.unnest(bindparam("channels", channels, type_=ARRAY(String)))
        .table_valued("channel")
        .render_derived(name="chosen")
    )
    address = case(
        (chosen.c.channel == "email", page.c.email),
        (chosen.c.channel == "sms", page.c.phone),
        (chosen.c.channel == "webhook", page.c.webhook_url),
        (chosen.c.channel == "inbox", page.c.external_id),
    )
    parts = [
        select(
            page.c.id.label("recipient_id"),
            page.c.locale,
            chosen.c.channel,
            func.coalesce(address, "").label("address"),
        )
        .select_from(page)
        .join(chosen, true())
        .where(chosen.c.channel != "push")
    ]
    if "push" in channels:
        token = func.jsonb_array_elements(page.c.push_tokens).table_valued("value").lateral("token")
        parts.append(
            select(
                page.c.id,
                page.c.locale,
                literal("push", String).label("channel"),
                (token.c.value["provider"].astext + ":" + token.c.value["token"].astext).label(
                    "address"
                ),
            )
            .select_from(page)
            .join(token, true())
        )
        parts.append(
            select(
                page.c.id,
                page.c.locale,
                literal("push", String).label("channel"),
                literal("", String).label("address"),
            ).where(func.jsonb_array_length(page.c.push_tokens) == 0)
        )
    found = union_all(*parts).subquery("found")
    # suppression_key in SQL: addresses are stored normalised (phones in E.164), and e-mail
    # addresses compare without case. A column of its own, so that the suppressions lookup
    # is an equality on their unique index's columns, which the planner uses even before
    # it has statistics (a tenant's recipients loaded a moment ago).
    lookup = case(
        (found.c.channel == "email", func.lower(func.btrim(found.c.address))),
        else_=func.btrim(found.c.address),
    )
    return select(found, lookup.label("lookup")).cte("targets").prefix_with("MATERIALIZED")


def _skip_reason(
    targets: Any,
    notification: Notification,
    *,
    dropped: list[str],
    honours_opt_outs: bool,
    topic: str | None,
) -> ColumnElement[Any]:
    """Why a target is skipped, in planning's order (app/recipients/planning.py): the
    tenant's switch, no address, an opt-out, a suppression."""
    whens: list[tuple[ColumnElement[bool], str]] = []
    if dropped:
        whens.append((targets.c.channel.in_(dropped), KILL_SWITCH))
    whens.append((targets.c.address == "", NO_ADDRESS))
    if honours_opt_outs:
        opted_out: ColumnElement[bool] = exists().where(
            Preference.tenant_id == notification.tenant_id,
            Preference.recipient_id == targets.c.recipient_id,
            Preference.category.in_([ALL_CATEGORIES, notification.category]),
            Preference.channel == targets.c.channel,
            Preference.enabled.is_(False),
        )
        if topic is not None:
            opted_out = or_(
                opted_out,
                exists().where(
                    TopicPreference.recipient_id == targets.c.recipient_id,
                    TopicPreference.topic_key == topic,
                    TopicPreference.channel == targets.c.channel,
                    TopicPreference.enabled.is_(False),
                ),
            )
        whens.append((opted_out, OPTED_OUT))
    suppressed = exists().where(
        Suppression.tenant_id == notification.tenant_id,
        Suppression.mode == notification.mode,
        Suppression.channel == targets.c.channel,
        Suppression.address == targets.c.lookup,
    )
    whens.append((suppressed, SUPPRESSED))
    return case(*whens, else_=None)


def _page(
    notification: Notification, audience: Audience, size: int, *, from_start: bool = False
) -> Any:
    """The audience's next `size` recipients in id order, after the cursor (`from_start`:
    the first `size`).

    A topic's page is walked on its members' primary key (tenant, mode, topic, recipient),
    which gives the order by itself: the plan is the same whatever the statistics say."""
    after = None if from_start else notification.expansion_cursor
    columns = (
        Recipient.id,
        Recipient.external_id,
        Recipient.email,
        Recipient.phone,
        Recipient.push_tokens,
        Recipient.webhook_url,
        Recipient.locale,
    )
    if audience.topic is not None:
        return (
            select(*columns)
            .select_from(TopicMember)
            .join(
                Recipient,
                and_(
                    Recipient.tenant_id == TopicMember.tenant_id,
                    Recipient.id == TopicMember.recipient_id,
                ),
            )
            .where(
                TopicMember.tenant_id == notification.tenant_id,
                TopicMember.mode == notification.mode,
                TopicMember.topic_key == audience.topic,
                *([TopicMember.recipient_id > after] if after is not None else []),
                Recipient.erased_at.is_(None),
            )
            .order_by(TopicMember.recipient_id)
            .limit(size)
        )
    matched = condition(audience, tenant_id=notification.tenant_id, mode=notification.mode)
    return (
        select(*columns)
        .where(
            Recipient.tenant_id == notification.tenant_id,
            Recipient.mode == notification.mode,
            Recipient.erased_at.is_(None),
            matched,
            *([Recipient.id > after] if after is not None else []),
        )
        .order_by(Recipient.id)
        .limit(size)
    )


async def audience_size(session: AsyncSession, notification: Notification, bound: int) -> int:
    """How many recipients the audience has now, counted up to `bound`: one statement over
    the selection its pages walk, from the start, that reads at most `bound` of them."""
    selection = _page(notification, audience_of(notification), bound, from_start=True)
    found = await session.scalar(
        select(func.count()).select_from(selection.order_by(None).subquery("audience"))
    )
    return int(found or 0)


def page_statement(
    notification: Notification,
    choices: list[ContentChoice],
    tenant: DeliverySettings,
    *,
    page_size: int = PAGE_SIZE,
) -> Any:
    """One page: its messages written (held), and what was written."""
    audience = audience_of(notification)
    page = _page(notification, audience, page_size).cte("page").prefix_with("MATERIALIZED")
    targets = _targets(page, list(notification.channels))
    rules = rules_for(bool(notification.critical))
    dropped = []
    if not rules.ignores_drop_noncritical:
        switches = tenant.kill_switches
        dropped = [c for c in notification.channels if switches.get(c) == DROP_NONCRITICAL]
    decided = (
        select(
            targets,
            _skip_reason(
                targets,
                notification,
                dropped=dropped,
                honours_opt_outs=not rules.ignores_opt_outs,
                topic=audience.topic,
            ).label("skip_reason"),
        )
        .cte("decided")
        .prefix_with("MATERIALIZED")
    )
    table_of_choices = values(
        column("channel", String),
        column("tag", String),
        column("render_id", Uuid),
        column("failure", Text),
        name="choices",
    ).data([(c.channel, c.tag, c.render_id, c.failure) for c in choices])
    locale = func.lower(decided.c.locale)
    content = (
        select(table_of_choices.c.render_id, table_of_choices.c.failure)
        .where(
            table_of_choices.c.channel == decided.c.channel,
            or_(
                table_of_choices.c.tag.is_(None),
                locale == table_of_choices.c.tag,
                func.starts_with(locale, table_of_choices.c.tag + "-"),
            ),
        )
        .order_by(func.length(table_of_choices.c.tag).desc().nulls_last())
        .limit(1)
        .lateral("content")
    )
    skipped = decided.c.skip_reason.is_not(None)
    failed = and_(decided.c.skip_reason.is_(None), content.c.failure.is_not(None))
    rows = select(
        func.herald_uuid7(),
        literal(notification.id, Uuid),
        literal(notification.tenant_id, Uuid),
        literal(notification.mode, String),
        decided.c.recipient_id,
        decided.c.channel,
        decided.c.address,
        case((skipped, None), else_=content.c.render_id),
        case((skipped, "skipped"), (failed, "failed"), else_="queued"),
        decided.c.skip_reason,
        case((failed, "render"), else_=None),
        case((failed, content.c.failure), else_=None),
        func.now(),
        case((skipped, None), (failed, None), else_=HELD),
    ).select_from(decided.outerjoin(content, true()))
    written = (
        insert(Message)
        .from_select(list(bulk.MESSAGE_COLUMNS), rows)  # the columns dispatch's rows fill
        .on_conflict_do_nothing()
        .returning(Message.status, Message.channel)
        .cte("written")
    )
    # PostgreSQL before 18 has no max(uuid): the page's last id, by its order.
    last = select(
        select(page.c.id).order_by(page.c.id.desc()).limit(1).scalar_subquery().label("last")
    ).subquery("last")
    tally = (
        select(written.c.status, written.c.channel, func.count().label("n"))
        .group_by(written.c.status, written.c.channel)
        .subquery("tally")
    )
    return select(last.c.last, tally.c.status, tally.c.channel, tally.c.n).select_from(
        last.outerjoin(tally, true())
    )


async def write_page(
    session: AsyncSession,
    notification: Notification,
    choices: list[ContentChoice],
    tenant: DeliverySettings,
    *,
    page_size: int = PAGE_SIZE,
) -> Page:
    """Write the next page's messages and move the cursor past it (the caller commits)."""
    # The statement is cheap per row but has many expressions: compiling them (JIT) costs
    # more than running them, on every page.
    await session.execute(text("SET LOCAL jit = off"))
    rows = (
        await session.execute(page_statement(notification, choices, tenant, page_size=page_size))
    ).all()
    last = rows[0].last if rows else None
    if last is None:
        return Page(None, 0, 0)
    counts: dict[str, int] = {}
    queued: dict[str, int] = {}
    for row in rows:
        if row.status is not None:
            counts[row.status] = counts.get(row.status, 0) + row.n
            if row.status == "queued":
                queued[row.channel] = row.n
    notification.expansion_cursor = last
    return Page(last, counts.get("queued", 0), counts.get("skipped", 0), queued)


async def skip_over_quota(
    session: AsyncSession, notification_id: uuid.UUID, channel: str, excess: int
) -> int:
    """Skip (reason `quota`) the `excess` newest held messages of the notification on
    `channel`: the page just written, which the plan's quota cannot hold; how many."""
    newest = (
        select(Message.id)
        .where(
            Message.notification_id == notification_id,
            Message.channel == channel,
            Message.status == "queued",
            Message.next_attempt_at == HELD,
        )
        .order_by(Message.id.desc())
        .limit(excess)
        .scalar_subquery()
    )
    skipped = await session.execute(
        update(Message)
        .where(Message.id.in_(newest))
        .values(status="skipped", skip_reason="quota", next_attempt_at=None)
        .returning(Message.id)
    )
    return len(skipped.all())


async def next_people(
    session: AsyncSession, notification: Notification, size: int
) -> list[Recipient]:
    """The next page of the audience's recipients, for content rendered per recipient."""
    matched = condition(
        audience_of(notification), tenant_id=notification.tenant_id, mode=notification.mode
    )
    after = notification.expansion_cursor
    found = await session.scalars(
        select(Recipient)
        .where(
            Recipient.tenant_id == notification.tenant_id,
            Recipient.mode == notification.mode,
            Recipient.erased_at.is_(None),
            matched,
            *([Recipient.id > after] if after is not None else []),
        )
        .order_by(Recipient.id)
        .limit(size)
    )
    return list(found)


@dataclass(frozen=True)
class Release:
    jobs: list[outbox.Job]
    ids: list[uuid.UUID]


async def walk_held_in_order(session: AsyncSession) -> None:
    """Read ix_messages_held as an ordered index scan that stops at the limit.

    A broadcast's notification is newer than the table's statistics (which may be far
    behind a table that grew by a million rows a minute ago), so the planner takes its held
    messages for a handful and prefers a bitmap scan, which reads every held entry of the
    notification before the limit applies: a million at the start of a release."""
    await session.execute(text("SET LOCAL enable_bitmapscan = off"))


def release_statement(notification_id: uuid.UUID, size: int, after: uuid.UUID | None) -> Any:
    held = (
        select(Message.id)
        .where(
            Message.notification_id == notification_id,
            Message.next_attempt_at == HELD,
            Message.status == "queued",
            *([Message.id > after] if after is not None else []),
        )
        .order_by(Message.id)
        .limit(size)
        .with_for_update(skip_locked=True)
        .cte("held")
    )
    return (
        update(Message)
        .where(Message.id.in_(select(held.c.id)))
        .values(next_attempt_at=func.now(), updated_at=func.now())
        .returning(Message.id, Message.channel)
    )


async def release(
    session: AsyncSession,
    notification: Notification,
    size: int,
    after: uuid.UUID | None = None,
) -> Release:
    """Make up to `size` held messages of the notification due now, the oldest first (past
    `after`: the last one an earlier release of the same run made due), and return their
    deliver jobs (the caller commits, then enqueues them)."""
    await walk_held_in_order(session)
    query = release_statement(notification.id, size, after)
    rows = sorted((await session.execute(query)).all(), key=lambda row: (row.channel, row.id))
    jobs = [
        outbox.deliver(notification.priority, ids)
        for _, ids in outbox.batches((row.channel, row.id) for row in rows)
    ]
    return Release(jobs, [row.id for row in rows])


def still_queued_statement(ids: Sequence[uuid.UUID]) -> Any:
    return (
        select(func.count())
        .select_from(Message)
        .where(
            Message.id.in_(bindparam("ids", list(ids), expanding=True)),
            Message.status == "queued",
        )
    )


async def still_queued(session: AsyncSession, ids: Sequence[uuid.UUID]) -> int:
    """How many of a released window wait in the queue still (by primary key)."""
    if not ids:
        return 0
    found = await session.scalar(still_queued_statement(ids))
    return int(found or 0)


async def held_count(session: AsyncSession, notification_id: uuid.UUID) -> int:
    """How many of the notification's messages wait to be released (an index-only count)."""
    found = await session.scalar(
        select(func.count())
        .select_from(Message)
        .where(Message.notification_id == notification_id, Message.next_attempt_at == HELD)
    )
    return int(found or 0)


async def cancel_held(session: AsyncSession, notification_id: uuid.UUID, size: int) -> int:
    """Cancel up to `size` of a cancelled notification's held messages; how many."""
    await walk_held_in_order(session)
    held = (
        select(Message.id)
        .where(Message.notification_id == notification_id, Message.next_attempt_at == HELD)
        .limit(size)
        .with_for_update(skip_locked=True)
        .cte("held")
    )
    result = await session.execute(
        update(Message)
        .where(Message.id.in_(select(held.c.id)), Message.status.in_(("queued", "retrying")))
        .values(status="cancelled", next_attempt_at=None, updated_at=func.now())
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def tick(rate: float) -> tuple[int, float]:
    """(messages per release, seconds between releases) for a send rate of `rate`/s: a
    window of at least one batch, at most MAX_WINDOW."""
    seconds = max(MIN_TICK, outbox.BATCH_SIZE / max(rate, 1e-9))
    return max(1, min(MAX_WINDOW, int(rate * seconds))), seconds


def window_after(rate: float, elapsed: float) -> int:
    """Messages a release makes due `elapsed` seconds after the last one: what the rate
    allows in that time, so that a release held up (by a page being written, a slow commit)
    keeps the tenant's pace, but never less than a tick's window nor more than MAX_WINDOW."""
    window, _ = tick(rate)
    return max(window, min(MAX_WINDOW, int(rate * elapsed)))
