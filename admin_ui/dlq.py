"""The dead-letter queue pages: failed messages grouped by error class, provider and status
code, a group's messages page by page, one message with its attempts; replay or discard one
message or a whole group.

Replaying and discarding go in two steps: a dry run (the service's count of what the action
would move, nothing changed) answered with a confirmation form that carries that count,
then the action, refused and asked again if the count changed meanwhile. Both steps work as
htmx partials swapped into the page and, without JavaScript, as plain posts answered with
the whole page. The DLQ service refuses a role that may not manage it (app/auth/roles.py).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlencode

from litestar import Controller, Request, Response, get, post
from litestar.datastructures import FormMultiDict
from litestar.di import Provide
from litestar.exceptions import NotFoundException
from litestar.params import FromPath, FromQuery
from litestar.plugins.htmx import HTMXTemplate

from admin_ui.pages import form_text, is_htmx, page
from admin_ui.query_params import CURSOR_MAX_LENGTH, read_cursor
from admin_ui.query_params import bad_input as invalid
from admin_ui.session import Member, SignedInMember, provide_member, refused, require
from app.auth import roles
from app.delivery.outbox import Outbox
from app.dependencies import DbSession, OutboxDependency
from app.dlq import service
from app.dlq.service import GroupKey, Selection
from app.notifications import queries
from app.notifications.queries import MessageFilters

PAGE_SIZE = 50
# The groups page counts the newest dead letters only, so that it answers fast however many
# there are; it says so when there are more (replay and discard act on every one).
GROUPS_SCAN = 5_000
ERROR_CLASSES = ("transient", "rate_limited", "permanent", "config", "render")
PROVIDER_MAX_LENGTH = 32  # messages.provider
Action = Literal["replay", "discard"]


def group_query(group: GroupKey) -> str:
    """A group's key as the query string of its page (empty values stand for none)."""
    return urlencode(
        {
            "error_class": group.error_class or "",
            "provider": group.provider or "",
            "code": "" if group.status_code is None else str(group.status_code),
        }
    )


def read_group(error_class: str, provider: str, code: str) -> GroupKey:
    """A group's key from query or form values; 422 naming the field that is wrong."""
    if error_class and error_class not in ERROR_CLASSES:
        raise invalid("error_class", f"one of {', '.join(ERROR_CLASSES)}, or empty")
    if len(provider) > PROVIDER_MAX_LENGTH:
        raise invalid("provider", f"at most {PROVIDER_MAX_LENGTH} characters")
    status_code: int | None = None
    if code:
        if not (code.isascii() and code.isdigit() and len(code) == 3):
            raise invalid("code", "a three-digit HTTP status code, or empty")
        status_code = int(code)
    return GroupKey(error_class or None, provider or None, status_code)


@dataclass(frozen=True)
class Target:
    """What a replay or discard acts on: one message, or a group."""

    message_id: uuid.UUID | None = None
    group: GroupKey | None = None

    @classmethod
    def read(cls, form: FormMultiDict) -> Target:
        message = form_text(form, "message")
        if message:
            try:
                if len(message) > CURSOR_MAX_LENGTH:
                    raise ValueError(message[:CURSOR_MAX_LENGTH])
                return cls(message_id=uuid.UUID(message))
            except ValueError:
                raise invalid("message", "not a message id") from None
        if form_text(form, "group") != "1":
            raise invalid("message", "give a message or a group")
        group = read_group(
            form_text(form, "error_class"), form_text(form, "provider"), form_text(form, "code")
        )
        return cls(group=group)

    @property
    def selection(self) -> Selection:
        if self.message_id is not None:
            return Selection(ids=[self.message_id])
        return Selection(filters=MessageFilters(), group=self.group)

    @property
    def back(self) -> str:
        """The page the action was started from."""
        if self.message_id is not None:
            return f"/dlq/{self.message_id}"
        assert self.group is not None
        return f"/dlq/group?{group_query(self.group)}"


def read_expected(form: FormMultiDict) -> int:
    expected = form_text(form, "expected")
    if not (expected.isascii() and expected.isdigit() and len(expected) <= 10):
        raise invalid("expected", "the count the confirmation showed")
    return int(expected)


async def _counted(db_session: DbSession, member: Member, target: Target, action: Action) -> int:
    replayable, not_replayable = await service.count(
        db_session, tenant_id=member.tenant.id, mode=member.mode, selection=target.selection
    )
    return replayable if action == "replay" else replayable + not_replayable


def _answer(
    request: Request[Any, Any, Any], member: Member, status_code: int = 200, **context: Any
) -> Response[Any]:
    """The action panel: swapped in by htmx, or as a page of its own without JavaScript."""
    context = {"member": member, **context}
    if is_htmx(request):
        # Once messages moved, the page's tables reload themselves (hx-trigger dlq-changed).
        moved = context.get("step") == "done"
        return HTMXTemplate(
            template_name="dlq/_action.html",
            context=context,
            status_code=status_code,
            trigger_event="dlq-changed" if moved else None,
            after="receive" if moved else None,
        )
    return page("dlq/action.html", status_code=status_code, **context)


class DlqController(Controller):
    path = "/dlq"
    dependencies = {"member": Provide(provide_member)}

    @get("/")
    async def groups(self, db_session: DbSession, member: SignedInMember) -> Response[Any]:
        found = await service.groups(
            db_session,
            tenant_id=member.tenant.id,
            mode=member.mode,
            filters=MessageFilters(),
            scan_limit=GROUPS_SCAN,
        )
        capped = await service.more_failed_than(
            db_session, tenant_id=member.tenant.id, mode=member.mode, limit=GROUPS_SCAN
        )
        return page(
            "dlq/groups.html",
            member=member,
            groups=found,
            capped=capped,
            scan=GROUPS_SCAN,
            total=sum(group.count for group in found),
            group_query=group_query,
        )

    @get("/group")
    async def group(
        self,
        db_session: DbSession,
        member: SignedInMember,
        error_class: FromQuery[str] = "",
        provider: FromQuery[str] = "",
        code: FromQuery[str] = "",
        cursor: FromQuery[str] = "",
    ) -> Response[Any]:
        key = read_group(error_class, provider, code)
        after = read_cursor(cursor)
        found = await service.list_failed(
            db_session,
            tenant_id=member.tenant.id,
            mode=member.mode,
            filters=MessageFilters(),
            limit=PAGE_SIZE,
            cursor=after,
            group=key,
        )
        return page(
            "dlq/group.html",
            member=member,
            group=key,
            query=group_query(key),
            items=found.items,
            next_cursor=found.next_cursor,
            paged=after is not None,
            cursor="" if after is None else str(after),
        )

    @get("/{message_id:uuid}")
    async def item(
        self, db_session: DbSession, member: SignedInMember, message_id: FromPath[uuid.UUID]
    ) -> Response[Any]:
        found = await queries.get_message(
            db_session, tenant_id=member.tenant.id, mode=member.mode, message_id=message_id
        )
        if found is None:
            raise NotFoundException(f"No message {message_id} in {member.tenant.name}.")
        view, attempts = found
        last_code = next(
            (a.status_code for a in reversed(attempts) if a.status_code is not None), None
        )
        group = GroupKey(view.message.error_class, view.message.provider, last_code)
        return page(
            "dlq/item.html",
            member=member,
            view=view,
            attempts=attempts,
            group_query=group_query(group),
        )

    @post("/replay/preview")
    async def replay_preview(
        self, request: Request[Any, Any, Any], db_session: DbSession, member: SignedInMember
    ) -> Response[Any]:
        return await _preview(request, db_session, member, "replay")

    @post("/discard/preview")
    async def discard_preview(
        self, request: Request[Any, Any, Any], db_session: DbSession, member: SignedInMember
    ) -> Response[Any]:
        return await _preview(request, db_session, member, "discard")

    @post("/replay")
    async def replay(
        self,
        request: Request[Any, Any, Any],
        db_session: DbSession,
        outbox: OutboxDependency,
        member: SignedInMember,
    ) -> Response[Any]:
        return await _act(request, db_session, outbox, member, "replay")

    @post("/discard")
    async def discard(
        self,
        request: Request[Any, Any, Any],
        db_session: DbSession,
        outbox: OutboxDependency,
        member: SignedInMember,
    ) -> Response[Any]:
        return await _act(request, db_session, outbox, member, "discard")


async def _target(request: Request[Any, Any, Any], db_session: DbSession, member: Member) -> Target:
    """The form's target; a message that is not the member's tenant's and mode's is a 404."""
    form = await request.form()
    target = Target.read(form)
    if target.message_id is not None:
        found = await queries.get_message(
            db_session, tenant_id=member.tenant.id, mode=member.mode, message_id=target.message_id
        )
        if found is None:
            raise NotFoundException(f"No message {target.message_id} in {member.tenant.name}.")
    return target


async def _preview(
    request: Request[Any, Any, Any], db_session: DbSession, member: Member, action: Action
) -> Response[Any]:
    """The dry run: how many messages the action would move; nothing changes."""
    require(member, "manage_dlq")
    target = await _target(request, db_session, member)
    count = await _counted(db_session, member, target, action)
    return _answer(request, member, action=action, target=target, count=count, step="confirm")


async def _act(
    request: Request[Any, Any, Any],
    db_session: DbSession,
    outbox: Outbox,
    member: Member,
    action: Action,
) -> Response[Any]:
    """The confirmed action, if the count it was confirmed with still holds."""
    require(member, "manage_dlq")
    target = await _target(request, db_session, member)
    expected = read_expected(await request.form())
    count = await _counted(db_session, member, target, action)
    if count != expected or count == 0:  # nothing to do: said so, and nothing audited
        return _answer(
            request,
            member,
            action=action,
            target=target,
            count=count,
            step="confirm",
            **({"changed_from": expected} if count != expected else {}),
        )
    try:
        if action == "replay":
            outcome = await service.replay(
                db_session,
                outbox,
                tenant_id=member.tenant.id,
                mode=member.mode,
                selection=target.selection,
                actor=member.actor,
                role=member.role,
            )
            done = outcome.replayed
        else:
            done = await service.discard(
                db_session,
                tenant_id=member.tenant.id,
                mode=member.mode,
                selection=target.selection,
                actor=member.actor,
                role=member.role,
            )
            await db_session.commit()
    except roles.RoleNotAllowed as error:
        raise refused(member, error) from None
    return _answer(request, member, action=action, target=target, count=done, step="done")
