"""Bodies of the notification, message and cancel endpoints."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

import msgspec

from app.categories.keys import KEY_SCHEMA as CATEGORY_KEY_SCHEMA
from app.channels import Channel
from app.recipients.schemas import Locale, RecipientInput
from app.recipients.validation import EXTERNAL_ID_SCHEMA, MAX_EXTERNAL_ID
from app.templates.validation import KEY_PATTERN

MAX_RECIPIENTS = 1_000
MAX_DATA_BYTES = 64 * 1024

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
    categories only."""

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
    ]

    template: Annotated[
        str,
        msgspec.Meta(min_length=1, max_length=100, extra_json_schema={"pattern": KEY_PATTERN}),
    ]
    to: Annotated[
        list[RecipientId | RecipientInput],
        msgspec.Meta(
            min_length=1,
            max_length=MAX_RECIPIENTS,
            description="Recipients by external id, or inline (created or updated first).",
        ),
    ]
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


class NotificationAccepted(msgspec.Struct):
    id: uuid.UUID
    object: Literal["notification"]
    status: str
    created_at: datetime
    send_at: datetime | None


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
    status: str
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
    problems: dict[str, Any]
    messages: list[MessageOut]
    has_more_messages: bool


class AttemptOut(msgspec.Struct):
    n: int
    provider: str
    started_at: datetime
    latency_ms: int
    outcome: str  # sent | failed | lost (the worker died holding the message)
    error_class: str | None
    status_code: int | None
    error: str | None


class MessageDetail(MessageOut):
    rate_limited_attempts: int = 0  # attempts answered "rate limited": not spent from the budget
    history: list[AttemptOut] = msgspec.field(default_factory=list)


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
