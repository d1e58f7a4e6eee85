"""The delivery log and the message page: what happened to every message, and why.

/messages lists the messages of the mode the member is viewing, newest first, 50 a page,
filtered by the form's GET parameters (each checked and bounded: a bad one is a 422 naming
it). Page one polls /messages/live every two seconds for messages made since it was read
and prepends them; older pages (a cursor) do not poll. /messages/{id} is one message's
timeline, rendered content and, when it did not reach its recipient, why, in words.

Reads only: every member may see them, and every query is bound to the member's tenant and
mode by the services (app/notifications/log.py); another tenant's or mode's message is 404.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from litestar import Controller, Request, Response, get
from litestar.di import Provide
from litestar.exceptions import NotFoundException
from litestar.params import FromPath
from litestar.plugins.htmx import HTMXTemplate

from admin_ui.pages import page
from admin_ui.session import Member, SignedInMember, provide_member
from app.channels import CHANNELS
from app.dependencies import DbSession
from app.notifications import log
from app.notifications.models import MESSAGE_STATUSES
from app.providers.credentials import PROVIDERS
from app.recipients.validation import MAX_EXTERNAL_ID
from app.templates.validation import KEY_PATTERN

ERROR_CLASSES = ("transient", "rate_limited", "permanent", "config", "render")
FILTER_NAMES = (
    "status",
    "channel",
    "recipient",
    "template",
    "notification",
    "since",
    "until",
    "provider",
    "error_class",
)
TEMPLATE_MAX = 100  # notifications.template_key
TIME_MAX = 40
POLL_EVERY = "every 2s"
_TEMPLATE_KEY = re.compile(KEY_PATTERN)


@dataclass(frozen=True)
class LogQuery:
    """The log's GET parameters as sent, what they mean, and what is wrong with them."""

    given: dict[str, str]  # the filters as typed, for the form and the links
    filters: log.LogFilters
    cursor: log.Cursor | None = None
    after: uuid.UUID | None = None
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def filtered(self) -> bool:
        return any(self.given.values())

    def link(self, **extra: str) -> str:
        """The log's URL with these filters (and `extra`, a cursor say)."""
        params = {name: value for name, value in self.given.items() if value}
        params.update(extra)
        return "/messages" + (f"?{urlencode(params)}" if params else "")

    def live_link(self, after: uuid.UUID) -> str:
        params = {name: value for name, value in self.given.items() if value}
        params["after"] = log.Cursor(after).encode()
        return f"/messages/live?{urlencode(params)}"

    @classmethod
    def read(cls, request: Request[Any, Any, Any]) -> LogQuery:
        query = request.query_params
        given = {name: (query.get(name) or "").strip() for name in FILTER_NAMES}
        errors: dict[str, str] = {}

        def one_of(name: str, allowed: tuple[str, ...]) -> str | None:
            value = given[name]
            if value and value not in allowed:
                errors[name] = f"Choose one of: {', '.join(allowed)}."
                return None
            return value or None

        def bounded(name: str, most: int, pattern: re.Pattern[str] | None = None) -> str | None:
            value = given[name]
            if len(value) > most:
                errors[name] = f"At most {most} characters, please."
                return None
            if value and (not value.isprintable() or (pattern and not pattern.match(value))):
                errors[name] = "That is not a valid value."
                return None
            return value or None

        def moment(name: str) -> datetime | None:
            value = given[name]
            if not value:
                return None
            try:
                if len(value) > TIME_MAX:
                    raise ValueError(value)
                parsed = datetime.fromisoformat(value)
            except ValueError:
                errors[name] = "A date and time, e.g. 2026-12-05T09:30 (UTC)."
                return None
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)

        notification_id = None
        if given["notification"]:
            try:
                notification_id = uuid.UUID(given["notification"][:64])
            except ValueError:
                errors["notification"] = "A notification id, e.g. 0193a1b2-…"
        since, until = moment("since"), moment("until")
        if since and until and until <= since:
            errors["until"] = "Must be after “since”."
        filters = log.LogFilters(
            status=one_of("status", MESSAGE_STATUSES),
            channel=one_of("channel", CHANNELS),
            recipient=bounded("recipient", MAX_EXTERNAL_ID),
            template=bounded("template", TEMPLATE_MAX, _TEMPLATE_KEY),
            notification_id=notification_id,
            since=since,
            until=until,
            provider=one_of("provider", PROVIDERS),
            error_class=one_of("error_class", ERROR_CLASSES),
        )
        cursor = after = None
        if query.get("cursor"):
            try:
                cursor = log.Cursor.decode(query.get("cursor") or "")
            except log.BadCursor:
                errors["cursor"] = "This page link is damaged: start again from the newest."
        if query.get("after"):
            try:
                after = log.Cursor.decode(query.get("after") or "").message_id
            except log.BadCursor:
                errors["after"] = "This live update link is damaged: reload the page."
        return cls(given, filters, cursor, after, errors)


def _choices() -> dict[str, tuple[str, ...]]:
    return {
        "status": MESSAGE_STATUSES,
        "channel": CHANNELS,
        "provider": PROVIDERS,
        "error_class": ERROR_CLASSES,
    }


class MessagesController(Controller):
    path = "/messages"
    dependencies = {"member": Provide(provide_member)}

    @get("/")
    async def delivery_log(
        self, request: Request[Any, Any, Any], db_session: DbSession, member: SignedInMember
    ) -> Response[Any]:
        query = LogQuery.read(request)
        context: dict[str, Any] = {"member": member, "query": query, "choices": _choices()}
        if query.errors:
            return page(
                "messages/log.html", status_code=422, rows=[], older=None, live=None, **context
            )
        found = await log.log_page(
            db_session,
            tenant_id=member.tenant.id,
            mode=member.mode,
            filters=query.filters,
            cursor=query.cursor,
            limit=log.PAGE_SIZE,
        )
        # Only page one grows at the top: an older page stays as it was read.
        live = query.live_link(found.high_water) if query.cursor is None else None
        return page(
            "messages/log.html",
            rows=found.rows,
            older=query.link(cursor=found.older.encode()) if found.older else None,
            live=live,
            **context,
        )

    @get("/live")
    async def live_rows(
        self, request: Request[Any, Any, Any], db_session: DbSession, member: SignedInMember
    ) -> Response[Any]:
        """Rows made since `after`, to prepend, and the poller again with the new mark."""
        query = LogQuery.read(request)
        if query.after is None and "after" not in query.errors:
            query.errors["after"] = "Missing: reload the page."
        if query.errors or query.after is None:
            return HTMXTemplate(
                template_name="messages/live.html",
                context={"member": member, "query": query, "rows": [], "live": None},
                status_code=422,
            )
        found = await log.newer(
            db_session,
            tenant_id=member.tenant.id,
            mode=member.mode,
            filters=query.filters,
            after=query.after,
            limit=log.PAGE_SIZE,
        )
        return HTMXTemplate(
            template_name="messages/live.html",
            context={
                "member": member,
                "query": query,
                "rows": found.rows,
                "overflow": found.overflow,
                "page_size": log.PAGE_SIZE,
                # Past a page of new rows the page stops following: reloading shows them.
                "live": None if found.overflow else query.live_link(found.high_water),
            },
        )

    @get("/{message_id:uuid}")
    async def message(
        self, db_session: DbSession, member: SignedInMember, message_id: FromPath[uuid.UUID]
    ) -> Response[Any]:
        found = await log.message_page(
            db_session, tenant_id=member.tenant.id, mode=member.mode, message_id=message_id
        )
        if found is None:
            raise NotFoundException(_not_found(member, message_id))
        return page("messages/message.html", member=member, view=found)


def _not_found(member: Member, message_id: uuid.UUID) -> str:
    data = "test" if member.mode == "test" else "live"
    return f"No message {message_id} in {member.tenant.name}'s {data} data."
