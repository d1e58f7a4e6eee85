"""Bodies of the notification, message and cancel endpoints."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

from app.channels import Channel
from app.recipients.schemas import RecipientInput

MAX_RECIPIENTS = 1_000
MAX_DATA_BYTES = 64 * 1024

Priority = Literal["high", "normal", "low"]


class NotificationCreate(msgspec.Struct, forbid_unknown_fields=True):
    template: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    to: Annotated[list[str | RecipientInput], msgspec.Meta(min_length=1, max_length=MAX_RECIPIENTS)]
    channels: Annotated[list[Channel], msgspec.Meta(min_length=1)] | None = None
    data: dict[str, Any] = msgspec.field(default_factory=dict)
    category: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None = None
    priority: Priority = "normal"
    send_at: datetime | None = None
    locale: Annotated[str, msgspec.Meta(min_length=2, max_length=35)] | None = None


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
