"""/v1/notifications and /v1/messages: send, inspect, cancel."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.params import FromPath, FromQuery, HeaderParameter, JSONBody, QueryParameter

from app.apidoc import problem_responses
from app.auth.keys import Principal
from app.auth.middleware import requires_scope
from app.channels import Channel
from app.db import utcnow
from app.dependencies import DbSession, IntakeDependency, OutboxDependency
from app.notifications import intake, queries
from app.notifications.schemas import (
    MAX_IDEMPOTENCY_KEY,
    AttemptOut,
    CancelResult,
    MessageDetail,
    MessageList,
    MessageOut,
    NotificationAccepted,
    NotificationBatch,
    NotificationBatchItem,
    NotificationBatchItemResult,
    NotificationBatchResult,
    NotificationCreate,
    NotificationOut,
    PauseResult,
    ResumeResult,
    TimelineEventOut,
)
from app.notifications.writer import IntakeUnavailable
from app.pagination import MAX_LIMIT
from app.problems import Problem, ProblemDetails, conversion_error, field_error, problem_body
from app.receipts import service as receipts
from app.usage import overflow
from app.usage.quota import QuotaExceeded

ApiRequest = Request[Principal, None, Any]
MessageStatus = Literal[
    "queued",
    "sending",
    "sent",
    "retrying",
    "failed",
    "skipped",
    "cancelled",
    "delivered",
    "opened",
    "clicked",
    "bounced",
    "complained",
    "undelivered",
]


def _accepted(notification: intake.AcceptedNotification) -> NotificationAccepted:
    return NotificationAccepted(
        id=notification.id,
        object="notification",
        status=notification.status,
        created_at=notification.created_at,
        send_at=notification.send_at,
    )


def _batch_result(
    request: ApiRequest,
    index: int,
    item: NotificationBatchItem,
    answer: intake.Accepted | BaseException,
) -> NotificationBatchItemResult:
    """An item's result: what a single POST of it would have answered."""
    at = f"notifications[{index}]"
    if isinstance(answer, intake.Accepted):
        return NotificationBatchItemResult(
            index, 202, _accepted(answer.notification), answer.replayed, None
        )
    if isinstance(answer, intake.InvalidNotification):
        refusal = {"field": f"{at}.{answer.field}", "message": str(answer)}
        return _refused(request, index, 422, "validation_error", [refusal])
    if isinstance(answer, intake.IdempotencyConflict):
        refusal = {"field": f"{at}.idempotency_key", "message": "reused with a different body"}
        detail = (
            f"Idempotency-Key {item.idempotency_key!r} was used for notification "
            f"{answer.original_id} with a different body; use a new key."
        )
        return _refused(request, index, 422, "idempotency_key_reused", [refusal], detail)
    if isinstance(answer, QuotaExceeded):
        return _refused(request, index, 429, "quota_exceeded", None, str(answer))
    if isinstance(answer, IntakeUnavailable):
        detail = (
            "The notification could not be stored; it was not accepted. Send it again with "
            "the same idempotency_key."
        )
        return _refused(request, index, 503, "unavailable", None, detail)
    raise answer  # not an answer a single POST would give: the handler's own failure


def quota_problem(over: QuotaExceeded) -> Problem:
    """429 `quota_exceeded`, naming the channel, the plan and when the quota resets."""
    wait = max(1, int((over.resets_at - utcnow()).total_seconds()))
    return Problem(
        429,
        "quota_exceeded",
        str(over),
        headers={"Retry-After": str(wait)},
        channel=over.channel,
        plan=over.plan,
        remaining=over.left,
        resets_at=over.resets_at.isoformat().replace("+00:00", "Z"),
    )


def _refused(
    request: ApiRequest,
    index: int,
    status: int,
    slug: str,
    errors: list[dict[str, str]] | None,
    detail: str | None = None,
) -> NotificationBatchItemResult:
    if detail is None:
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors or [])
    problem = msgspec.convert(
        problem_body(request, status, slug, detail, errors=errors), ProblemDetails
    )
    return NotificationBatchItemResult(index, status, None, False, problem)


def message_out(view: queries.MessageView) -> MessageOut:
    m = view.message
    return MessageOut(
        id=m.id,
        object="message",
        notification_id=m.notification_id,
        recipient=view.recipient,
        channel=m.channel,
        address=m.address,
        status=m.status,
        skip_reason=m.skip_reason,
        attempts=m.attempts,
        provider=m.provider,
        provider_message_id=m.provider_message_id,
        error_class=m.error_class,
        last_error=m.last_error,
        next_attempt_at=m.next_attempt_at,
        created_at=m.created_at,
        sent_at=m.sent_at,
    )


def _not_pausable(notification_id: uuid.UUID, status: str, verb: str) -> Problem:
    return Problem(
        409,
        "conflict",
        f"Notification {notification_id} is {status}: it cannot be {verb}.",
        notification_status=status,
    )


def _not_found(notification_id: uuid.UUID) -> Problem:
    return Problem(404, "not_found", f"No notification {notification_id} in this tenant.")


class NotificationController(Controller):
    path = "/notifications"
    tags = ["Notifications"]

    @post(
        "/",
        status_code=202,
        guards=[requires_scope("send")],
        summary="Send a notification; 202 once it is durably accepted",
        responses=problem_responses(
            {
                429: "Over the tenant's or the key's rate limit (`rate_limited`), or a "
                "blocking plan's monthly quota for a channel has too little left "
                "(`quota_exceeded`: `channel`, `plan`, `remaining`, `resets_at`); "
                "`Retry-After` says when to come back.",
                503: "The notification could not be stored; retry with the same Idempotency-Key.",
            }
        ),
    )
    async def send(
        self,
        request: ApiRequest,
        intake_writer: IntakeDependency,
        data: JSONBody[NotificationCreate],
        idempotency_key: Annotated[
            str | None,
            # Checked below, not by the framework, whose error would name the Python argument.
            HeaderParameter(
                name="Idempotency-Key",
                schema_extra={"min_length": 1, "max_length": MAX_IDEMPOTENCY_KEY},
            ),
        ] = None,
    ) -> Response[NotificationAccepted]:
        if idempotency_key is not None and not 1 <= len(idempotency_key) <= MAX_IDEMPOTENCY_KEY:
            raise field_error("Idempotency-Key", f"1 to {MAX_IDEMPOTENCY_KEY} characters")
        try:
            accepted = await intake_writer.accept(request.user, data, idempotency_key)
        except IntakeUnavailable:
            raise Problem(
                503,
                "unavailable",
                "The notification could not be stored; nothing was accepted. Retry with the "
                "same Idempotency-Key.",
            ) from None
        except intake.InvalidNotification as invalid:
            raise field_error(invalid.field, str(invalid)) from None
        except QuotaExceeded as over:
            raise quota_problem(over) from None
        except intake.IdempotencyConflict as conflict:
            raise Problem(
                422,
                "idempotency_key_reused",
                f"Idempotency-Key {idempotency_key!r} was used for notification "
                f"{conflict.original_id} with a different body; use a new key.",
                errors=[{"field": "Idempotency-Key", "message": "reused with a different body"}],
            ) from None
        headers = {"Idempotent-Replayed": "true"} if accepted.replayed else {}
        return Response(_accepted(accepted.notification), status_code=202, headers=headers)

    @post(
        "/batch",
        status_code=200,
        guards=[requires_scope("send")],
        summary="Send up to 1,000 notifications at once; each is accepted or refused on its own",
    )
    async def send_batch(
        self,
        request: ApiRequest,
        intake_writer: IntakeDependency,
        data: JSONBody[NotificationBatch],
    ) -> NotificationBatchResult:
        results: list[NotificationBatchItemResult | None] = [None] * len(data.notifications)
        checked: list[tuple[int, NotificationBatchItem]] = []
        for index, raw in enumerate(data.notifications):
            try:
                # As Litestar converts a single POST's body, so each item reads the same.
                item = msgspec.convert(raw, NotificationBatchItem, strict=False, str_keys=True)
            except msgspec.ValidationError as error:
                refusal = conversion_error(error, f"notifications[{index}]")
                results[index] = _refused(request, index, 422, "validation_error", [refusal])
            else:
                checked.append((index, item))
        answers = await intake_writer.accept_many(
            request.user, [(item.notification(), item.idempotency_key) for _, item in checked]
        )
        for (index, item), answer in zip(checked, answers, strict=True):
            results[index] = _batch_result(request, index, item, answer)
        done = [result for result in results if result is not None]
        accepted = sum(1 for result in done if result.status == 202)
        return NotificationBatchResult(
            object="notification_batch",
            accepted=accepted,
            refused=len(done) - accepted,
            data=done,
        )

    @get(
        "/{notification_id:uuid}",
        guards=[requires_scope("read")],
        summary="A notification and its messages",
    )
    async def read(
        self, request: ApiRequest, db_session: DbSession, notification_id: FromPath[uuid.UUID]
    ) -> NotificationOut:
        view = await queries.get_notification(
            db_session,
            tenant_id=request.user.tenant_id,
            mode=request.user.mode,
            notification_id=notification_id,
        )
        if view is None:
            raise _not_found(notification_id)
        n = view.notification
        return NotificationOut(
            id=n.id,
            object="notification",
            status=n.status,
            mode=n.mode,
            template=n.template_key,
            template_version=n.template_version,
            category=n.category,
            channels=n.channels,
            priority=n.priority,
            send_at=n.send_at,
            created_at=n.created_at,
            dispatched_at=n.dispatched_at,
            counts=view.counts,
            problems=n.problems,
            messages=[message_out(m) for m in view.messages],
            has_more_messages=view.has_more_messages,
            on_quota_exceeded=overflow.own(n.on_quota_exceeded),
        )

    @post(
        "/{notification_id:uuid}/cancel",
        status_code=200,
        guards=[requires_scope("send")],
        summary="Cancel: messages not yet sent are skipped",
    )
    async def cancel(
        self,
        request: ApiRequest,
        db_session: DbSession,
        outbox: OutboxDependency,
        notification_id: FromPath[uuid.UUID],
    ) -> CancelResult:
        outcome = await queries.cancel(
            db_session,
            tenant_id=request.user.tenant_id,
            mode=request.user.mode,
            notification_id=notification_id,
        )
        if outcome is None:
            raise _not_found(notification_id)
        await db_session.commit()
        await outbox.enqueue_after_commit(outcome.jobs)
        notification = outcome.notification
        return CancelResult(notification.id, "notification", notification.status, outcome.messages)

    @post(
        "/{notification_id:uuid}/pause",
        status_code=200,
        guards=[requires_scope("send")],
        summary="Pause: nothing more is sent (nor dispatched) until it is resumed",
        responses=problem_responses({409: "Only an accepted or dispatched one can be paused."}),
    )
    async def pause(
        self, request: ApiRequest, db_session: DbSession, notification_id: FromPath[uuid.UUID]
    ) -> PauseResult:
        try:
            control = await queries.pause(
                db_session,
                tenant_id=request.user.tenant_id,
                mode=request.user.mode,
                notification_id=notification_id,
            )
        except queries.NotPausable as refused:
            raise _not_pausable(notification_id, refused.status, "paused") from None
        if control is None:
            raise _not_found(notification_id)
        await db_session.commit()
        return PauseResult(control.notification.id, "notification", "paused", control.messages)

    @post(
        "/{notification_id:uuid}/resume",
        status_code=200,
        guards=[requires_scope("send")],
        summary="Resume a paused notification: what it held is sent (or dispatched) now",
        responses=problem_responses({409: "Only a paused one can be resumed."}),
    )
    async def resume(
        self,
        request: ApiRequest,
        db_session: DbSession,
        outbox: OutboxDependency,
        notification_id: FromPath[uuid.UUID],
    ) -> ResumeResult:
        try:
            control = await queries.resume(
                db_session,
                tenant_id=request.user.tenant_id,
                mode=request.user.mode,
                notification_id=notification_id,
            )
        except queries.NotPausable as refused:
            raise _not_pausable(notification_id, refused.status, "resumed") from None
        if control is None:
            raise _not_found(notification_id)
        await db_session.commit()
        await outbox.enqueue_after_commit(control.jobs)
        notification = control.notification
        return ResumeResult(notification.id, "notification", notification.status, control.messages)


@get(
    "/messages/{message_id:uuid}",
    tags=["Notifications"],
    guards=[requires_scope("read")],
    summary="A message and every attempt to deliver it",
)
async def read_message(
    request: ApiRequest, db_session: DbSession, message_id: FromPath[uuid.UUID]
) -> MessageDetail:
    found = await queries.get_message(
        db_session,
        tenant_id=request.user.tenant_id,
        mode=request.user.mode,
        message_id=message_id,
    )
    if found is None:
        raise Problem(404, "not_found", f"No message {message_id} in this tenant.")
    view, attempts = found
    return MessageDetail(
        **msgspec.structs.asdict(message_out(view)),
        rate_limited_attempts=view.message.rate_limited_attempts,
        history=[
            AttemptOut(
                n=a.n,
                provider=a.provider,
                started_at=a.started_at,
                latency_ms=a.latency_ms,
                outcome=a.outcome,
                error_class=a.error_class,
                status_code=a.status_code,
                error=a.error,
            )
            for a in attempts
        ],
        events=[
            TimelineEventOut(
                kind=e.kind,
                occurred_at=e.occurred_at,
                received_at=e.created_at,
                applied=e.applied,
                detail=e.detail,
            )
            for e in await receipts.timeline(db_session, view.message.id)
        ],
    )


@get("/messages", tags=["Notifications"], guards=[requires_scope("read")], summary="List messages")
async def list_messages(
    request: ApiRequest,
    db_session: DbSession,
    status: FromQuery[MessageStatus | None] = None,
    channel: FromQuery[Channel | None] = None,
    recipient: FromQuery[str | None] = None,
    notification: FromQuery[uuid.UUID | None] = None,
    since: FromQuery[datetime | None] = None,
    until: FromQuery[datetime | None] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT)] = 20,
    cursor: FromQuery[uuid.UUID | None] = None,
) -> MessageList:
    filters = queries.MessageFilters(status, channel, recipient, notification, since, until)
    page = await queries.list_messages(
        db_session,
        tenant_id=request.user.tenant_id,
        mode=request.user.mode,
        filters=filters,
        limit=limit,
        cursor=cursor,
    )
    return MessageList(
        "list", [message_out(v) for v in page.items], page.has_more, page.next_cursor
    )
