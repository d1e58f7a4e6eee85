"""/v1/recipients (with their preferences) and /v1/suppressions.

Scopes: reading needs `read`; every write (PUT, POST, DELETE) needs `send`, the scope of
the integrations that register users as they notify them. Every object read or written is
of the calling key's mode (app/modes.py).
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from litestar import Controller, Request, Response, delete, get, post, put
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from app import crypto
from app.auth.keys import Principal
from app.auth.middleware import requires_scope
from app.channels import Channel
from app.dependencies import DbSession
from app.pagination import MAX_LIMIT
from app.problems import Problem
from app.recipients import preferences as prefs
from app.recipients import service, suppressions
from app.recipients.models import Recipient
from app.recipients.schemas import (
    Preferences,
    PreferencesOut,
    RecipientBatch,
    RecipientBatchResult,
    RecipientInput,
    RecipientList,
    RecipientOut,
    RecipientUpdate,
    SuppressionCreate,
    SuppressionList,
    SuppressionOut,
)
from app.recipients.validation import RecipientInvalid

ApiRequest = Request[Principal, None, Any]
READ = [requires_scope("read")]
SEND = [requires_scope("send")]
# Lifting bounce protection is configuration.
MANAGE = [requires_scope("manage")]
Limit = Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT)]


def invalid(error: RecipientInvalid, prefix: str | None = None) -> Problem:
    """A 422 naming every refused field (`recipients[i].field` in a batch)."""
    errors = [
        {"field": e.path(prefix) if prefix else e.field, "message": e.message} for e in error.errors
    ]
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return Problem(422, "validation_error", detail, errors=errors)


def _no_recipient(external_id: str, mode: str) -> Problem:
    return Problem(404, "not_found", f"No recipient {external_id!r} in {mode} mode.")


async def _recipient(db_session: DbSession, caller: Principal, external_id: str) -> Recipient:
    recipient = await service.get_recipient(
        db_session, tenant_id=caller.tenant_id, mode=caller.mode, external_id=external_id
    )
    if recipient is None:
        raise _no_recipient(external_id, caller.mode)
    return recipient


CREATED = {201: ResponseSpec(data_container=RecipientOut, description="Created")}


class RecipientController(Controller):
    path = "/recipients"
    tags = ["Recipients"]

    @put(
        "/{external_id:str}",
        guards=SEND,
        status_code=200,
        responses=CREATED,
        summary="Create or update a recipient (201 when created)",
    )
    async def put_recipient(
        self,
        request: ApiRequest,
        db_session: DbSession,
        external_id: FromPath[str],
        data: JSONBody[RecipientUpdate],
    ) -> Response[RecipientOut]:
        fields = {name: getattr(data, name) for name in data.__struct_fields__}
        item = RecipientInput(external_id=external_id, **fields)
        try:
            [upserted] = await service.upsert_with_outcome(
                db_session, tenant_id=request.user.tenant_id, mode=request.user.mode, items=[item]
            )
        except RecipientInvalid as error:
            raise invalid(error) from None
        await db_session.commit()
        status = 201 if upserted.created else 200
        return Response(RecipientOut.of(upserted.recipient), status_code=status)

    @get("/{external_id:str}", guards=READ, summary="Read a recipient")
    async def get_recipient(
        self, request: ApiRequest, db_session: DbSession, external_id: FromPath[str]
    ) -> RecipientOut:
        return RecipientOut.of(await _recipient(db_session, request.user, external_id))

    @delete(
        "/{external_id:str}",
        guards=SEND,
        status_code=200,
        summary="Erase a recipient's personal data; the external id becomes free",
    )
    async def erase_recipient(
        self, request: ApiRequest, db_session: DbSession, external_id: FromPath[str]
    ) -> RecipientOut:
        erased = await service.erase_recipient(
            db_session,
            tenant_id=request.user.tenant_id,
            mode=request.user.mode,
            external_id=external_id,
            actor=request.user.actor,
            keyring=crypto.keyring_for(request.app.state.settings),
        )
        if erased is None:
            raise _no_recipient(external_id, request.user.mode)
        await db_session.commit()
        return RecipientOut.of(erased)

    @get("/", guards=READ, summary="List recipients, newest first")
    async def list_recipients(
        self,
        request: ApiRequest,
        db_session: DbSession,
        limit: Limit = 20,
        cursor: FromQuery[uuid.UUID | None] = None,
        email: FromQuery[str | None] = None,
        phone: FromQuery[str | None] = None,
    ) -> RecipientList:
        if phone is not None and not phone.startswith("+"):
            # An unencoded '+' in a query string arrives as a space.
            phone = "+" + phone.strip()
        try:
            page = await service.list_recipients(
                db_session,
                tenant_id=request.user.tenant_id,
                mode=request.user.mode,
                limit=limit,
                cursor=cursor,
                email=email,
                phone=phone,
            )
        except RecipientInvalid as error:
            raise invalid(error) from None
        return RecipientList(
            object="list",
            data=[RecipientOut.of(r) for r in page.items],
            has_more=page.has_more,
            next_cursor=page.next_cursor,
        )

    @post(
        "/batch",
        guards=SEND,
        status_code=200,
        summary="Create or update up to 1,000 recipients at once",
    )
    async def batch(
        self, request: ApiRequest, db_session: DbSession, data: JSONBody[RecipientBatch]
    ) -> RecipientBatchResult:
        if not data.recipients:
            raise invalid(RecipientInvalid("recipients", "at least one recipient is required"))
        try:
            outcome = await service.upsert_with_outcome(
                db_session,
                tenant_id=request.user.tenant_id,
                mode=request.user.mode,
                items=data.recipients,
            )
        except RecipientInvalid as error:
            raise invalid(error, prefix="recipients") from None
        await db_session.commit()
        created = sum(1 for u in outcome if u.created)
        return RecipientBatchResult(
            object="recipient_batch",
            created=created,
            updated=len(outcome) - created,
            data=[RecipientOut.of(u.recipient) for u in outcome],
        )

    @get("/{external_id:str}/preferences", guards=READ, summary="A recipient's preferences")
    async def get_preferences(
        self, request: ApiRequest, db_session: DbSession, external_id: FromPath[str]
    ) -> PreferencesOut:
        recipient = await _recipient(db_session, request.user, external_id)
        found = await prefs.get_preferences(
            db_session, tenant_id=recipient.tenant_id, recipient_id=recipient.id
        )
        return PreferencesOut.of(found)

    @put(
        "/{external_id:str}/preferences",
        guards=SEND,
        summary="Set the switches given; the others stay",
    )
    async def put_preferences(
        self,
        request: ApiRequest,
        db_session: DbSession,
        external_id: FromPath[str],
        data: JSONBody[Preferences],
    ) -> PreferencesOut:
        recipient = await _recipient(db_session, request.user, external_id)
        try:
            stored = await prefs.set_preferences(
                db_session,
                tenant_id=recipient.tenant_id,
                recipient_id=recipient.id,
                channels=data.channels,
                categories=data.categories,
                topics=data.topics,
                actor=request.user.actor,
            )
        except RecipientInvalid as error:
            raise invalid(error) from None
        await db_session.commit()
        return PreferencesOut.of(stored)


class SuppressionController(Controller):
    path = "/suppressions"
    tags = ["Suppressions"]

    @get("/", guards=READ, summary="List suppressed addresses, newest first")
    async def list_suppressions(
        self,
        request: ApiRequest,
        db_session: DbSession,
        limit: Limit = 20,
        cursor: FromQuery[uuid.UUID | None] = None,
        channel: FromQuery[Channel | None] = None,
        address: FromQuery[str | None] = None,
    ) -> SuppressionList:
        page = await suppressions.list_suppressions(
            db_session,
            tenant_id=request.user.tenant_id,
            mode=request.user.mode,
            limit=limit,
            cursor=cursor,
            channel=channel,
            address=address,
            keyring=crypto.keyring_for(request.app.state.settings),
        )
        return SuppressionList(
            object="list",
            data=[SuppressionOut.of(s) for s in page.items],
            has_more=page.has_more,
            next_cursor=page.next_cursor,
        )

    @post(
        "/",
        guards=SEND,
        status_code=200,
        responses={201: ResponseSpec(data_container=SuppressionOut, description="Created")},
        summary="Suppress an address on a channel (201 when new)",
    )
    async def add_suppression(
        self, request: ApiRequest, db_session: DbSession, data: JSONBody[SuppressionCreate]
    ) -> Response[SuppressionOut]:
        try:
            row, created = await suppressions.add_suppression(
                db_session,
                tenant_id=request.user.tenant_id,
                mode=request.user.mode,
                channel=data.channel,
                address=data.address,
                reason=data.reason,
                source=data.source or request.user.actor,
                actor=request.user.actor,
            )
        except RecipientInvalid as error:
            raise invalid(error) from None
        await db_session.commit()
        return Response(SuppressionOut.of(row), status_code=201 if created else 200)

    @delete("/{suppression_id:uuid}", guards=MANAGE, status_code=200, summary="Lift a suppression")
    async def remove_suppression(
        self, request: ApiRequest, db_session: DbSession, suppression_id: FromPath[uuid.UUID]
    ) -> SuppressionOut:
        removed = await suppressions.remove_suppression(
            db_session,
            tenant_id=request.user.tenant_id,
            mode=request.user.mode,
            suppression_id=suppression_id,
            actor=request.user.actor,
        )
        if removed is None:
            raise Problem(
                404, "not_found", f"No suppression {suppression_id} in {request.user.mode} mode."
            )
        await db_session.commit()
        return SuppressionOut.of(removed)
