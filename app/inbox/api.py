"""/v1/recipients/{id}/inbox: the in-app inbox, for a recipient token or a `read` API key.

Two controllers, for two kinds of caller: InboxTokenController issues and revokes inbox
tokens, for API keys with `send` (on the API-key routes); InboxController reads and marks an
inbox, on a router of its own that checks inbox tokens itself (app/inbox/guard.py).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, get, post
from litestar.exceptions import NotAuthorizedException
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.keys import Principal
from app.auth.middleware import CHALLENGE, requires_scope
from app.dependencies import DbSession
from app.inbox import service
from app.inbox.guard import inbox_reader
from app.inbox.tokens import MAX_TTL, RecipientPrincipal
from app.pagination import MAX_LIMIT
from app.problems import Problem
from app.recipients import service as recipients
from app.templates.content import safe_action_url

InboxRequest = Request[Principal | RecipientPrincipal, None, Any]


class InboxItemOut(msgspec.Struct):
    id: uuid.UUID
    object: Literal["inbox_item"]
    notification_id: uuid.UUID
    title: str
    body: str
    action_url: str | None
    created_at: Any
    read_at: Any


class InboxOut(msgspec.Struct):
    object: Literal["list"]
    data: list[InboxItemOut]
    unread_count: int
    has_more: bool
    next_cursor: str | None


class MarkedRead(msgspec.Struct):
    marked_read: int
    unread_count: int


class TokenRequest(msgspec.Struct, forbid_unknown_fields=True):
    ttl_seconds: Annotated[int, msgspec.Meta(ge=60, le=MAX_TTL)] = 24 * 3600


class TokenOut(msgspec.Struct):
    token: str
    expires_at: int
    recipient: str


class TokensRevoked(msgspec.Struct):
    object: Literal["inbox_tokens_revoked"]
    recipient: str
    revoked_before: datetime


async def _recipient_id(
    session: AsyncSession, principal: Principal | RecipientPrincipal, external_id: str
) -> uuid.UUID:
    found = await recipients.get_recipient(
        session, tenant_id=principal.tenant_id, mode=principal.mode, external_id=external_id
    )
    # A token for another recipient learns nothing: the same 404 as a missing recipient.
    if found is None or (
        isinstance(principal, RecipientPrincipal) and principal.recipient_id != found.id
    ):
        raise Problem(404, "not_found", f"No recipient {external_id!r} whose inbox you may read.")
    if isinstance(principal, RecipientPrincipal) and service.token_revoked(principal, found):
        raise NotAuthorizedException(
            detail="This inbox token has been revoked; ask your server for a new one.",
            headers=CHALLENGE,
        )
    return found.id


class InboxTokenController(Controller):
    path = "/recipients/{external_id:str}"
    tags = ["Inbox"]

    @post(
        "/inbox-token",
        status_code=201,
        guards=[requires_scope("send")],
        summary="A token your front-end uses to read this recipient's inbox",
    )
    async def issue_token(
        self,
        request: Request[Principal, None, Any],
        db_session: DbSession,
        external_id: FromPath[str],
        data: JSONBody[TokenRequest | None] = None,
    ) -> TokenOut:
        recipient_id = await _recipient_id(db_session, request.user, external_id)
        token, expires_at = request.app.state.inbox_tokens.issue(
            tenant_id=request.user.tenant_id,
            recipient_id=recipient_id,
            mode=request.user.mode,
            ttl=(data or TokenRequest()).ttl_seconds,
        )
        return TokenOut(token=token, expires_at=expires_at, recipient=external_id)

    @post(
        "/inbox-tokens/revoke",
        status_code=200,
        guards=[requires_scope("send")],
        summary="Revoke every inbox token issued for this recipient so far",
    )
    async def revoke_tokens(
        self,
        request: Request[Principal, None, Any],
        db_session: DbSession,
        external_id: FromPath[str],
    ) -> TokensRevoked:
        recipient_id = await _recipient_id(db_session, request.user, external_id)
        revoked_before = await service.revoke_tokens(
            db_session,
            tenant_id=request.user.tenant_id,
            recipient_id=recipient_id,
            actor=request.user.actor,
        )
        await db_session.commit()
        return TokensRevoked(
            object="inbox_tokens_revoked", recipient=external_id, revoked_before=revoked_before
        )


class InboxController(Controller):
    path = "/recipients/{external_id:str}"
    tags = ["Inbox"]
    guards = [inbox_reader]

    @get(
        "/inbox",
        summary="The recipient's inbox, newest first",
    )
    async def read_inbox(
        self,
        request: InboxRequest,
        db_session: DbSession,
        external_id: FromPath[str],
        unread: FromQuery[bool] = False,
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT)] = 20,
        cursor: FromQuery[uuid.UUID | None] = None,
    ) -> InboxOut:
        recipient_id = await _recipient_id(db_session, request.user, external_id)
        page = await service.list_inbox(
            db_session,
            tenant_id=request.user.tenant_id,
            recipient_id=recipient_id,
            unread_only=unread,
            limit=limit,
            cursor=cursor,
        )
        return InboxOut(
            "list",
            [
                InboxItemOut(
                    id=item.id,
                    object="inbox_item",
                    notification_id=item.notification_id,
                    title=item.content.get("title", ""),
                    body=item.content.get("body", ""),
                    action_url=safe_action_url(item.content.get("action_url")),
                    created_at=item.created_at,
                    read_at=item.read_at,
                )
                for item in page.items
            ],
            page.unread_count,
            page.has_more,
            page.next_cursor,
        )

    @post(
        "/inbox/{message_id:uuid}/read",
        status_code=200,
        summary="Mark one item read; 404 when it is not an item of this inbox",
    )
    async def mark_one(
        self,
        request: InboxRequest,
        db_session: DbSession,
        external_id: FromPath[str],
        message_id: FromPath[uuid.UUID],
    ) -> MarkedRead:
        return await self._mark(request, db_session, external_id, message_id)

    @post(
        "/inbox/read-all",
        status_code=200,
        summary="Mark every item read",
    )
    async def mark_all(
        self, request: InboxRequest, db_session: DbSession, external_id: FromPath[str]
    ) -> MarkedRead:
        return await self._mark(request, db_session, external_id, None)

    async def _mark(
        self,
        request: InboxRequest,
        db_session: AsyncSession,
        external_id: str,
        message_id: uuid.UUID | None,
    ) -> MarkedRead:
        tenant_id = request.user.tenant_id
        recipient_id = await _recipient_id(db_session, request.user, external_id)
        try:
            changed = await service.mark_read(
                db_session, tenant_id=tenant_id, recipient_id=recipient_id, message_id=message_id
            )
        except service.ItemNotFound:
            raise Problem(
                404, "not_found", f"No item {message_id} in the inbox of {external_id!r}."
            ) from None
        await db_session.commit()
        page = await service.list_inbox(
            db_session,
            tenant_id=tenant_id,
            recipient_id=recipient_id,
            unread_only=True,
            limit=1,
            cursor=None,
        )
        return MarkedRead(marked_read=changed, unread_count=page.unread_count)
