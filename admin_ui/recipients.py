"""The recipients pages: find a tenant's end users, see everything about one, erase one.

- /recipients: the newest recipients, or a search by the beginning of an external id, an
  e-mail or a phone number (app/recipients/search.py), a keyset page at a time.
- /recipients/{id}: addresses, preference switches, suppressions (a builder may lift one),
  topics, inbox and latest messages (app/recipients/profile.py), with links to the delivery
  log. Its last card erases the recipient: the member types the external id to confirm,
  and the erasure (app/recipients/erasure.py) is audited.

Every read is bound to the member's tenant and data mode: another tenant's or mode's
recipient is a 404. Roles are checked here before a form is read, and again by the
services (manage_recipients, erase_recipients in app/auth/roles.py).
"""

from __future__ import annotations

import uuid
from typing import Any

from litestar import Controller, Request, Response, get, post
from litestar.di import Provide
from litestar.exceptions import NotFoundException
from litestar.params import FromPath, FromQuery

from admin_ui.pages import form_text, page, see_other
from admin_ui.session import Member, SignedInMember, provide_member, refused, require
from app import crypto
from app.auth import roles
from app.dependencies import DbSession
from app.recipients import profile, service
from app.recipients.search import MAX_CURSOR, SEARCH_FIELDS, SearchInvalid, check_search
from app.recipients.search import search_recipients as search
from app.recipients.validation import MAX_EXTERNAL_ID

PAGE_SIZE = 25
NOTICES = {
    "erased": "The recipient was erased: their personal data is gone, their counts remain.",
    "suppression_removed": "The suppression was lifted: Herald may send to that address again.",
}
FIELD_LABELS = {"external_id": "External id", "email": "E-mail", "phone": "Phone"}


def _not_found(member: Member) -> NotFoundException:
    return NotFoundException(f"No such recipient in {member.tenant.name}'s {member.mode} data.")


def _keyring(request: Request[Any, Any, Any]) -> crypto.Keyring:
    return crypto.keyring_for(request.app.state.settings)


class RecipientsController(Controller):
    path = "/recipients"
    dependencies = {"member": Provide(provide_member)}

    @get("/")
    async def list_recipients(
        self,
        db_session: DbSession,
        member: SignedInMember,
        q: FromQuery[str] = "",
        by: FromQuery[str] = "",
        after: FromQuery[str] = "",
        notice: FromQuery[str] = "",
    ) -> Response[Any]:
        context: dict[str, Any] = {
            "member": member,
            "q": q[:MAX_CURSOR],
            "by": by if by in SEARCH_FIELDS else "",
            "fields": FIELD_LABELS,
            "notice": NOTICES.get(notice, ""),
            "errors": {},
        }
        try:
            if len(after) > MAX_CURSOR:
                raise SearchInvalid("after", "not a cursor of this list")
            if q.strip() or by:
                if by and by not in SEARCH_FIELDS:
                    raise SearchInvalid("by", "search by external id, e-mail or phone")
                wanted = check_search(q, by or None)
                context["searched"] = wanted
                found = await search(
                    db_session,
                    tenant_id=member.tenant.id,
                    mode=member.mode,
                    search=wanted,
                    limit=PAGE_SIZE,
                    after=after or None,
                )
            else:
                cursor = _uuid_cursor(after)
                found = await service.list_recipients(
                    db_session,
                    tenant_id=member.tenant.id,
                    mode=member.mode,
                    limit=PAGE_SIZE,
                    cursor=cursor,
                )
        except SearchInvalid as invalid:
            context["errors"] = {invalid.field: invalid.message}
            return page(
                "recipients/list.html",
                status_code=422,
                recipients=[],
                next_cursor=None,
                **context,
            )
        return page(
            "recipients/list.html",
            recipients=found.items,
            next_cursor=found.next_cursor,
            **context,
        )

    @get("/{recipient_id:uuid}")
    async def show(
        self,
        request: Request[Any, Any, Any],
        db_session: DbSession,
        member: SignedInMember,
        recipient_id: FromPath[uuid.UUID],
        notice: FromQuery[str] = "",
    ) -> Response[Any]:
        return await _detail(request, db_session, member, recipient_id, notice=notice)

    @post("/{recipient_id:uuid}/suppressions/{suppression_id:uuid}/remove")
    async def remove_suppression(
        self,
        request: Request[Any, Any, Any],
        db_session: DbSession,
        member: SignedInMember,
        recipient_id: FromPath[uuid.UUID],
        suppression_id: FromPath[uuid.UUID],
    ) -> Response[Any]:
        require(member, "manage_recipients")
        recipient = await profile.get_recipient_by_id(
            db_session, tenant_id=member.tenant.id, mode=member.mode, recipient_id=recipient_id
        )
        if recipient is None:
            raise _not_found(member)
        try:
            removed = await profile.remove_suppression_of(
                db_session,
                tenant_id=member.tenant.id,
                mode=member.mode,
                recipient=recipient,
                suppression_id=suppression_id,
                actor=member.actor,
                role=member.role,
                keyring=_keyring(request),
            )
        except roles.RoleNotAllowed as error:
            raise refused(member, error) from None
        if removed is None:
            raise NotFoundException("No such suppression for this recipient.")
        await db_session.commit()
        return see_other(request, f"/recipients/{recipient_id}?notice=suppression_removed")

    @post("/{recipient_id:uuid}/erase")
    async def erase(
        self,
        request: Request[Any, Any, Any],
        db_session: DbSession,
        member: SignedInMember,
        recipient_id: FromPath[uuid.UUID],
    ) -> Response[Any]:
        require(member, "erase_recipients")
        recipient = await profile.get_recipient_by_id(
            db_session, tenant_id=member.tenant.id, mode=member.mode, recipient_id=recipient_id
        )
        if recipient is None:
            raise _not_found(member)
        typed = form_text(await request.form(), "confirm").strip()[: MAX_EXTERNAL_ID + 1]
        if typed != recipient.external_id:
            message = (
                "Type the recipient's id to confirm."
                if not typed
                else "That is not this recipient's id: nothing was erased."
            )
            return await _detail(
                request,
                db_session,
                member,
                recipient_id,
                errors={"confirm": message},
                typed=typed,
                status_code=422,
            )
        try:
            erased = await service.erase_recipient(
                db_session,
                tenant_id=member.tenant.id,
                mode=member.mode,
                external_id=recipient.external_id,
                actor=member.actor,
                keyring=_keyring(request),
                role=member.role,
            )
        except roles.RoleNotAllowed as error:
            raise refused(member, error) from None
        if erased is None:  # erased meanwhile by someone else
            raise _not_found(member)
        await db_session.commit()
        return see_other(request, "/recipients?notice=erased")


def _uuid_cursor(after: str) -> uuid.UUID | None:
    if not after:
        return None
    try:
        return uuid.UUID(after)
    except ValueError:
        raise SearchInvalid("after", "not a cursor of this list") from None


async def _detail(
    request: Request[Any, Any, Any],
    db_session: DbSession,
    member: Member,
    recipient_id: uuid.UUID,
    *,
    notice: str = "",
    errors: dict[str, str] | None = None,
    typed: str = "",
    status_code: int = 200,
) -> Response[Any]:
    found = await profile.recipient_profile(
        db_session,
        tenant_id=member.tenant.id,
        mode=member.mode,
        recipient_id=recipient_id,
        keyring=_keyring(request),
    )
    if found is None:
        raise _not_found(member)
    return page(
        "recipients/detail.html",
        status_code=status_code,
        member=member,
        profile=found,
        recipient=found.recipient,
        notice=NOTICES.get(notice, ""),
        errors=errors or {},
        typed=typed,
    )
