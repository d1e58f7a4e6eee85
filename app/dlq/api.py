"""/v1/dlq: the dead-letter queue (failed messages), grouped, replayed, discarded."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from litestar import Controller, Request, get, post
from litestar.params import FromQuery, JSONBody, QueryParameter

from app.auth.keys import Principal
from app.auth.middleware import requires_scope
from app.channels import Channel
from app.dependencies import DbSession, OutboxDependency
from app.dlq import service
from app.dlq.schemas import (
    DiscardResult,
    DlqGroup,
    DlqList,
    DlqSelection,
    DryRunResult,
    ErrorClass,
    ReplayResult,
)
from app.notifications.api import message_out
from app.notifications.queries import MessageFilters
from app.pagination import MAX_LIMIT
from app.problems import field_error

ApiRequest = Request[Principal, None, Any]


def _selection(body: DlqSelection) -> service.Selection:
    if body.ids is not None and body.filter is not None:
        raise field_error("filter", "give either ids or filter, not both")
    if body.ids is not None:
        return service.Selection(ids=body.ids)
    if body.filter is None:
        raise field_error("ids", "give either ids or filter")
    f = body.filter
    return service.Selection(
        filters=_filters(f.error_class, f.provider, f.channel, f.notification, f.since, f.until)
    )


def _filters(
    error_class: str | None,
    provider: str | None,
    channel: str | None,
    notification: uuid.UUID | None,
    since: datetime | None,
    until: datetime | None,
) -> MessageFilters:
    return MessageFilters(
        channel=channel,
        notification_id=notification,
        since=since,
        until=until,
        error_class=error_class,
        provider=provider,
    )


class DlqController(Controller):
    path = "/dlq"
    tags = ["Dead-letter queue"]

    @get("/", guards=[requires_scope("read")], summary="Failed messages, newest first, grouped")
    async def list_failed(
        self,
        request: ApiRequest,
        db_session: DbSession,
        error_class: FromQuery[ErrorClass | None] = None,
        provider: Annotated[str | None, QueryParameter(min_length=1, max_length=32)] = None,
        channel: FromQuery[Channel | None] = None,
        notification: FromQuery[uuid.UUID | None] = None,
        since: FromQuery[datetime | None] = None,
        until: FromQuery[datetime | None] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT)] = 20,
        cursor: FromQuery[uuid.UUID | None] = None,
    ) -> DlqList:
        tenant_id, mode = request.user.tenant_id, request.user.mode
        filters = _filters(error_class, provider, channel, notification, since, until)
        page = await service.list_failed(
            db_session, tenant_id=tenant_id, mode=mode, filters=filters, limit=limit, cursor=cursor
        )
        groups = await service.groups(db_session, tenant_id=tenant_id, mode=mode, filters=filters)
        return DlqList(
            "list",
            [message_out(v) for v in page.items],
            page.has_more,
            page.next_cursor,
            [DlqGroup(g.error_class, g.provider, g.status_code, g.count) for g in groups],
        )

    @post(
        "/replay",
        status_code=200,
        guards=[requires_scope("send")],
        summary="Queue failed messages for delivery again",
    )
    async def replay(
        self,
        request: ApiRequest,
        db_session: DbSession,
        outbox: OutboxDependency,
        data: JSONBody[DlqSelection],
    ) -> ReplayResult | DryRunResult:
        selection = _selection(data)
        tenant_id, mode = request.user.tenant_id, request.user.mode
        if data.dry_run:
            replayable, not_replayable = await service.count(
                db_session, tenant_id=tenant_id, mode=mode, selection=selection
            )
            return DryRunResult(replayable, not_replayable)
        outcome = await service.replay(
            db_session,
            outbox,
            tenant_id=tenant_id,
            mode=mode,
            selection=selection,
            actor=request.user.actor,
        )
        return ReplayResult(outcome.replayed, outcome.not_replayable)

    @post(
        "/discard",
        status_code=200,
        guards=[requires_scope("manage")],
        summary="Cancel failed messages for good",
    )
    async def discard(
        self, request: ApiRequest, db_session: DbSession, data: JSONBody[DlqSelection]
    ) -> DiscardResult | DryRunResult:
        selection = _selection(data)
        tenant_id, mode = request.user.tenant_id, request.user.mode
        if data.dry_run:
            replayable, not_replayable = await service.count(
                db_session, tenant_id=tenant_id, mode=mode, selection=selection
            )
            return DryRunResult(replayable + not_replayable)
        discarded = await service.discard(
            db_session,
            tenant_id=tenant_id,
            mode=mode,
            selection=selection,
            actor=request.user.actor,
        )
        await db_session.commit()
        return DiscardResult(discarded)
