"""Bodies of the notification, message and cancel endpoints."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

import msgspec
from msgspec import UNSET, UnsetType

from app.audiences.schemas import Audience
from app.categories.keys import KEY_SCHEMA as CATEGORY_KEY_SCHEMA
from app.channels import Channel
from app.problems import ProblemDetails
from app.recipients.schemas import Locale, RecipientInput
from app.recipients.validation import EXTERNAL_ID_SCHEMA, MAX_EXTERNAL_ID
from app.templates.validation import KEY_PATTERN
from app.usage.overflow import OnQuotaExceeded

MAX_RECIPIENTS = 1_000
MAX_DATA_BYTES = 64 * 1024
MAX_IDEMPOTENCY_KEY = 255
MAX_BATCH_NOTIFICATIONS = 1_000

Priority = Literal["high", "normal", "low"]
# Checked by the intake (its errors name `to[3]`), described here.
RecipientId = Annotated[
    str,
    msgspec.Meta(
        extra_json_schema={**EXTERNAL_ID_SCHEMA, "minLength": 1, "maxLength": MAX_EXTERNAL_ID}
    ),
]


class NotificationCreate(msgspec.Struct, forbid_unknown_fields=True):
    """What to send to whom. The template, and the category when given, must exist in the
    key's mode; `channels` must be among the template's; `high` priority is for critical
    categories only.

    `to` is a list of recipients, or an audience: `{"topic": key}` (its members when the
    notification is dispatched), `{"all": true}` or `{"filter": …}` (docs/api/audiences.md).
    An audience is expanded inside the database in pages, whatever its size."""

    openapi_examples: ClassVar[list[dict[str, Any]]] = [
        {"template": "welcome", "to": ["user-1"], "data": {"name": "Ada"}},
        {
            "template": "welcome",
            "to": [{"external_id": "user-2", "email": "grace@example.com", "locale": "en"}],
            "channels": ["email"],
            "category": "transactional",
            "priority": "normal",
            "locale": "en",
        },
        {"template": "welcome", "to": ["user-1"], "send_at": "2026-01-01T09:00:00Z"},
        {"template": "welcome", "to": {"all": True}},
        {
            "template": "welcome",
            "to": {"filter": {"op": "equals", "field": "data.plan", "value": "pro"}},
        },
        {"template": "welcome", "to": {"all": True}, "on_quota_exceeded": "refuse"},
    ]

    template: Annotated[
        str,
        msgspec.Meta(min_length=1, max_length=100, extra_json_schema={"pattern": KEY_PATTERN}),
    ]
    to: (
        Annotated[
            list[RecipientId | RecipientInput],
            msgspec.Meta(
                min_length=1,
                max_length=MAX_RECIPIENTS,
                description="Recipients by external id, or inline (created or updated first).",
            ),
        ]
        | Audience
    )
    channels: Annotated[list[Channel], msgspec.Meta(min_length=1)] | None = None
    data: Annotated[
        dict[str, Any],
        msgspec.Meta(description=f"At most {MAX_DATA_BYTES // 1024} KiB once serialised."),
    ] = msgspec.field(default_factory=dict)
    category: (
        Annotated[
            str, msgspec.Meta(min_length=1, max_length=64, extra_json_schema=CATEGORY_KEY_SCHEMA)
        ]
        | None
    ) = None
    priority: Priority = "normal"
    send_at: (
        Annotated[
            datetime,
            msgspec.Meta(
                description="With its UTC offset, at most 90 days ahead; a past instant sends now.",
                extra_json_schema={"format": "date-time"},
            ),
        ]
        | None
    ) = None
    locale: Annotated[Locale, msgspec.Meta(min_length=2)] | None = None
    # UNSET when left out, and then left out of the request hash too: a body without it
    # hashes as it did before the member existed, so its Idempotency-Key still replays.
    on_quota_exceeded: (
        Annotated[
            OnQuotaExceeded,
            msgspec.Meta(
                description=(
                    "For an audience (topic, all, filter) on a plan that blocks at its quota: "
                    "`send_partial` sends up to what is left of the month's quota and skips "
                    "the rest (`skip_reason` `quota`); `refuse` sends nothing when the "
                    "audience is larger than what is left, and the notification ends "
                    "`refused`. Left out: the tenant's setting (`GET /v1/tenant/"
                    "on-quota-exceeded`) when it is dispatched. Not for a list of recipients "
                    "(422): a list over quota is refused whole at intake (429)."
                )
            ),
        ]
        | UnsetType
    ) = UNSET


class NotificationBatchItem(NotificationCreate, forbid_unknown_fields=True):
    """One notification of a batch: what POST /v1/notifications takes, with the
    Idempotency-Key that request would carry as a header."""

    openapi_examples: ClassVar[list[dict[str, Any]]] = [
        {"template": "receipt", "to": ["user-1"], "idempotency_key": "receipt-A-1001"}
    ]

    idempotency_key: (
        Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_IDEMPOTENCY_KEY)] | None
    ) = None

    def notification(self) -> NotificationCreate:
        """The notification alone: its request hash is the one a single POST would have."""
        fields = NotificationCreate.__struct_fields__
        return NotificationCreate(**{name: getattr(self, name) for name in fields})


class NotificationBatchShape(msgspec.Struct, forbid_unknown_fields=True):
    notifications: Annotated[
        list[NotificationBatchItem],
        msgspec.Meta(min_length=1, max_length=MAX_BATCH_NOTIFICATIONS),
    ]


class NotificationBatch(msgspec.Struct, forbid_unknown_fields=True):
    """Up to 1,000 notifications, each checked and accepted on its own: one that is refused
    does not keep the others from being accepted. The whole body is at most the API's body
    limit (1 MiB unless HERALD_MAX_BODY_BYTES says otherwise)."""

    # Decoded item by item (app/notifications/api.py), so that one item's wrong type is
    # that item's error; described as the items are checked.
    openapi_type: ClassVar[Any] = NotificationBatchShape
    openapi_examples: ClassVar[list[dict[str, Any]]] = [
        {
            "notifications": [
                {"template": "receipt", "to": ["user-1"], "idempotency_key": "receipt-A-1001"},
                {
                    "template": "receipt",
                    "to": [{"external_id": "user-2", "email": "grace@example.com"}],
                    "data": {"order": "A-1002"},
                    "idempotency_key": "receipt-A-1002",
                },
            ]
        }
    ]

    notifications: Annotated[
        list[Any], msgspec.Meta(min_length=1, max_length=MAX_BATCH_NOTIFICATIONS)
    ]


class NotificationAccepted(msgspec.Struct):
    id: uuid.UUID
    object: Literal["notification"]
    status: str
    created_at: datetime
    send_at: datetime | None


class NotificationBatchItemResult(msgspec.Struct):
    """What became of one item, at its index: accepted (202, `notification`, `replayed` when
    its Idempotency-Key had been accepted before), or not (`error`, a problem as a single
    POST would have answered: 422 with `errors` naming `notifications[i].…`, or 503)."""

    index: int
    status: Annotated[int, msgspec.Meta(extra_json_schema={"enum": [202, 422, 503]})]
    notification: NotificationAccepted | None
    replayed: bool
    error: ProblemDetails | None


class NotificationBatchResult(msgspec.Struct):
    object: Literal["notification_batch"]
    accepted: Annotated[int, msgspec.Meta(description="Items accepted (replays included).")]
    refused: Annotated[int, msgspec.Meta(description="Items not accepted: see their `error`.")]
    data: Annotated[
        list[NotificationBatchItemResult], msgspec.Meta(description="One per item, in order.")
    ]


class MessageOut(msgspec.Struct):
    id: uuid.UUID
    object: Literal["message"]
    notification_id: uuid.UUID
    recipient: str
    channel: str
    address: str
    status: str
    skip_reason: str | None
    attempts: int
    provider: str | None
    provider_message_id: str | None
    error_class: str | None
    last_error: str | None
    next_attempt_at: datetime | None
    created_at: datetime
    sent_at: datetime | None


class NotificationOut(msgspec.Struct):
    id: uuid.UUID
    object: Literal["notification"]
    status: Annotated[
        str,
        msgspec.Meta(
            description=(
                "`accepted`, `dispatched`, `paused`, `cancelled`, `failed` (`problems` says "
                "why), or `refused`: a broadcast larger than what was left of the quota, "
                "refused whole at dispatch (`problems.quota_exceeded`)."
            )
        ),
    ]
    mode: str
    template: str
    template_version: int
    category: str
    channels: list[str]
    priority: str
    send_at: datetime | None
    created_at: datetime
    dispatched_at: datetime | None
    counts: dict[str, int]
    problems: Annotated[
        dict[str, Any],
        msgspec.Meta(
            description=(
                "What went wrong: `unknown_recipients`, `template` or `category` (deleted "
                "after it was accepted), `dispatch` (why it failed), or `quota_exceeded` "
                "(why it was refused: `channel`, `plan`, `remaining`, `recipients`, "
                "`resets_at`, `detail`)."
            )
        ),
    ]
    messages: list[MessageOut]
    has_more_messages: bool
    on_quota_exceeded: Annotated[
        OnQuotaExceeded | None,
        msgspec.Meta(description="The request's own choice; null: the tenant's setting."),
    ] = None


class AttemptOut(msgspec.Struct):
    n: int
    provider: str
    started_at: datetime
    latency_ms: int
    outcome: str  # sent | failed | lost (the worker died holding the message)
    error_class: str | None
    status_code: int | None
    error: str | None


class TimelineEventOut(msgspec.Struct):
    """What a provider reported about the message, from its receipts (docs/api/receipts.md)."""

    kind: str  # sent, delivered, deferred, opened, clicked, bounced, complained, undelivered,
    # failed, unsubscribed, resubscribed
    occurred_at: datetime
    received_at: datetime
    applied: bool  # it moved the message's status (later, weaker or repeated events do not)
    detail: dict[str, Any]


class MessageDetail(MessageOut):
    rate_limited_attempts: int = 0  # attempts answered "rate limited": not spent from the budget
    history: list[AttemptOut] = msgspec.field(default_factory=list)
    # Providers' receipts, oldest first: the rest of the message's timeline after its attempts.
    events: list[TimelineEventOut] = msgspec.field(default_factory=list)


class MessageList(msgspec.Struct):
    object: Literal["list"]
    data: list[MessageOut]
    has_more: bool
    next_cursor: str | None


class CancelResult(msgspec.Struct):
    id: uuid.UUID
    object: Literal["notification"]
    status: str
    cancelled_messages: int


class PauseResult(msgspec.Struct):
    id: uuid.UUID
    object: Literal["notification"]
    status: Literal["paused"]
    held_messages: Annotated[
        int, msgspec.Meta(description="Messages not sent yet that now wait for the resume.")
    ]


class ResumeResult(msgspec.Struct):
    id: uuid.UUID
    object: Literal["notification"]
    status: Annotated[
        str, msgspec.Meta(description="`dispatched`, or `accepted` when it was paused before.")
    ]
    released_messages: Annotated[
        int, msgspec.Meta(description="Messages held by the pause, due again now.")
    ]
