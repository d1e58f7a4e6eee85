"""The notifications pages: every notification the tenant sent (newest first, filtered by
status, template and time, a page at a time), and one notification with its messages counted
by status, its audience and template; cancel it, or pause and resume it while it sends.

Totals come from the tallies PostgreSQL keeps as messages change (app/notifications/
tallies.py), never from counting messages. Cancel, pause and resume are confirmed in the
browser, work as htmx swaps of the status panel and, without JavaScript, as plain posts; the
notifications service refuses a role that may not take them (app/auth/roles.py).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from litestar import Controller, Request, Response, get, post
from litestar.di import Provide
from litestar.exceptions import HTTPException, NotFoundException
from litestar.params import FromPath, FromQuery
from litestar.plugins.htmx import HTMXTemplate
from sqlalchemy.ext.asyncio import AsyncSession

from admin_ui.pages import is_htmx, page, see_other
from admin_ui.query_params import bad_input as invalid
from admin_ui.query_params import read_cursor
from admin_ui.session import Member, SignedInMember, provide_member, refused, require
from app.auth import roles
from app.dependencies import DbSession, OutboxDependency
from app.notifications import log, queries, tallies
from app.notifications.models import MESSAGE_STATUSES, NOTIFICATION_STATUSES, Notification
from app.notifications.queries import NotificationFilters

PAGE_SIZE = 50
TEMPLATE_MAX_LENGTH = 100  # notifications.template_key
DATE_MAX_LENGTH = 32
RECIPIENTS_SHOWN = 50
NOTICES = {
    "cancelled": "Cancelled: messages not handed to a provider yet will not be sent.",
    "paused": "Paused: nothing more is sent until you resume it.",
    "resumed": "Resumed: what it held is being sent now.",
}
# What each status lets a member do (the service decides for sure; it refuses the rest).
CANCELLABLE = ("accepted", "dispatched", "paused")
PAUSABLE = ("accepted", "dispatched")


def read_moment(name: str, value: str) -> datetime | None:
    """A time filter, as a datetime-local field sends it (UTC) or in ISO 8601."""
    if not value:
        return None
    if len(value) > DATE_MAX_LENGTH:
        raise invalid(name, "a date and time such as 2026-01-31T09:30")
    try:
        return queries.in_utc(datetime.fromisoformat(value))
    except ValueError:
        raise invalid(name, "a date and time such as 2026-01-31T09:30") from None


def read_filters(status: str, template: str, since: str, until: str) -> NotificationFilters:
    if status and status not in NOTIFICATION_STATUSES:
        raise invalid("status", f"one of {', '.join(NOTIFICATION_STATUSES)}, or empty")
    if len(template) > TEMPLATE_MAX_LENGTH:
        raise invalid("template", f"at most {TEMPLATE_MAX_LENGTH} characters")
    return NotificationFilters(
        status=status or None,
        template=template.strip() or None,
        since=read_moment("since", since),
        until=read_moment("until", until),
    )


@dataclass(frozen=True)
class Targets:
    """Whom a notification was sent to, as the detail page shows it."""

    kind: str  # recipients | topic | all | filter
    recipients: list[str]
    more: int  # recipients not shown
    topic: str | None = None
    filter_text: str = ""

    @classmethod
    def of(cls, notification: Notification) -> Targets:
        audience = notification.audience
        if "recipients" in audience:
            ids = [str(i) for i in audience["recipients"]]
            return cls("recipients", ids[:RECIPIENTS_SHOWN], max(0, len(ids) - RECIPIENTS_SHOWN))
        if "topic" in audience:
            return cls("topic", [], 0, topic=str(audience["topic"]))
        if audience.get("all"):
            return cls("all", [], 0)
        return cls("filter", [], 0, filter_text=json.dumps(audience.get("filter"), indent=2))


def _ordered(counts: dict[str, int]) -> list[tuple[str, int]]:
    return [(status, counts[status]) for status in MESSAGE_STATUSES if counts.get(status)]


def _panel_context(
    member: Member, notification: Notification, counts: dict[str, int], notice: str
) -> dict[str, Any]:
    return {
        "member": member,
        "notification": notification,
        "totals": _ordered(counts),
        "total": sum(counts.values()),
        "failed": counts.get("failed", 0),
        "notice": notice,
        "may_act": member.may("cancel_notifications"),
        "cancellable": notification.status in CANCELLABLE,
        "pausable": notification.status in PAUSABLE,
        "resumable": notification.status == "paused",
    }


class NotificationsController(Controller):
    path = "/notifications"
    dependencies = {"member": Provide(provide_member)}

    @get("/")
    async def list_notifications(
        self,
        request: Request[Any, Any, Any],
        db_session: DbSession,
        member: SignedInMember,
        status: FromQuery[str] = "",
        template: FromQuery[str] = "",
        since: FromQuery[str] = "",
        until: FromQuery[str] = "",
        cursor: FromQuery[str] = "",
    ) -> Response[Any]:
        filters = read_filters(status, template, since, until)
        after = read_cursor(cursor)
        listed = await queries.list_notifications(
            db_session,
            tenant_id=member.tenant.id,
            mode=member.mode,
            filters=filters,
            limit=PAGE_SIZE,
            cursor=after,
            scan=queries.LIST_SCAN,
        )
        found = listed.page
        counts = await tallies.counts_of(db_session, notification_ids=[n.id for n in found.items])
        query = {"status": status, "template": template, "since": since, "until": until}
        context: dict[str, Any] = {
            "member": member,
            "notifications": found.items,
            "counts": {n.id: _ordered(counts.get(n.id, {})) for n in found.items},
            "next_cursor": found.next_cursor,
            "searched_to": listed.searched_to,
            "scan": queries.LIST_SCAN,
            "paged": after is not None,
            "filters": query,
            "filtered": any(query.values()),
            "filter_query": urlencode({k: v for k, v in query.items() if v}),
            "statuses": NOTIFICATION_STATUSES,
        }
        if is_htmx(request):
            return HTMXTemplate(template_name="notifications/_results.html", context=context)
        return page("notifications/list.html", **context)

    @get("/{notification_id:uuid}")
    async def detail(
        self,
        db_session: DbSession,
        member: SignedInMember,
        notification_id: FromPath[uuid.UUID],
        done: FromQuery[str] = "",
    ) -> Response[Any]:
        notification = await queries.find_notification(
            db_session,
            tenant_id=member.tenant.id,
            mode=member.mode,
            notification_id=notification_id,
        )
        if notification is None:
            raise NotFoundException(f"No notification {notification_id} in {member.tenant.name}.")
        # Its messages are listed by the delivery log (/messages?notification=…): listing
        # them here, newest first, would walk a broadcast's million.
        counts = await tallies.counts(db_session, notification_id=notification.id)
        return page(
            "notifications/detail.html",
            targets=Targets.of(notification),
            refusal=log.why_refused(notification),
            **_panel_context(member, notification, counts, NOTICES.get(done, "")),
        )

    @post("/{notification_id:uuid}/cancel")
    async def cancel(
        self,
        request: Request[Any, Any, Any],
        db_session: DbSession,
        outbox: OutboxDependency,
        member: SignedInMember,
        notification_id: FromPath[uuid.UUID],
    ) -> Response[Any]:
        require(member, "cancel_notifications")
        try:
            outcome = await queries.cancel(
                db_session,
                tenant_id=member.tenant.id,
                mode=member.mode,
                notification_id=notification_id,
                role=member.role,
                actor=member.actor,
            )
        except roles.RoleNotAllowed as error:
            raise refused(member, error) from None
        if outcome is None:
            raise NotFoundException(f"No notification {notification_id} in {member.tenant.name}.")
        await db_session.commit()
        await outbox.enqueue_after_commit(outcome.jobs)
        return await _done(request, db_session, member, outcome.notification, "cancelled")

    @post("/{notification_id:uuid}/pause")
    async def pause(
        self,
        request: Request[Any, Any, Any],
        db_session: DbSession,
        member: SignedInMember,
        notification_id: FromPath[uuid.UUID],
    ) -> Response[Any]:
        require(member, "cancel_notifications")
        try:
            control = await queries.pause(
                db_session,
                tenant_id=member.tenant.id,
                mode=member.mode,
                notification_id=notification_id,
                role=member.role,
                actor=member.actor,
            )
        except roles.RoleNotAllowed as error:
            raise refused(member, error) from None
        except queries.NotPausable as refusal:
            raise _conflict(notification_id, refusal.status, "paused") from None
        if control is None:
            raise NotFoundException(f"No notification {notification_id} in {member.tenant.name}.")
        await db_session.commit()
        return await _done(request, db_session, member, control.notification, "paused")

    @post("/{notification_id:uuid}/resume")
    async def resume(
        self,
        request: Request[Any, Any, Any],
        db_session: DbSession,
        outbox: OutboxDependency,
        member: SignedInMember,
        notification_id: FromPath[uuid.UUID],
    ) -> Response[Any]:
        require(member, "cancel_notifications")
        try:
            control = await queries.resume(
                db_session,
                tenant_id=member.tenant.id,
                mode=member.mode,
                notification_id=notification_id,
                role=member.role,
                actor=member.actor,
            )
        except roles.RoleNotAllowed as error:
            raise refused(member, error) from None
        except queries.NotPausable as refusal:
            raise _conflict(notification_id, refusal.status, "resumed") from None
        if control is None:
            raise NotFoundException(f"No notification {notification_id} in {member.tenant.name}.")
        await db_session.commit()
        await outbox.enqueue_after_commit(control.jobs)
        return await _done(request, db_session, member, control.notification, "resumed")


def _conflict(notification_id: uuid.UUID, status: str, verb: str) -> HTTPException:
    return HTTPException(
        status_code=409, detail=f"Notification {notification_id} is {status}: it cannot be {verb}."
    )


async def _done(
    request: Request[Any, Any, Any],
    db_session: AsyncSession,
    member: Member,
    notification: Notification,
    done: str,
) -> Response[Any]:
    """The status panel again, with what happened (htmx), or the page (without JavaScript)."""
    if not is_htmx(request):
        return see_other(request, f"/notifications/{notification.id}?done={done}")
    counts = await tallies.counts(db_session, notification_id=notification.id)
    return HTMXTemplate(
        template_name="notifications/_panel.html",
        context=_panel_context(member, notification, counts, NOTICES[done]),
    )
