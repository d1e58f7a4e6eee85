"""Request and response bodies of /v1/recipients and /v1/suppressions.

Recipient bodies use msgspec's UNSET to tell a field left out (unchanged on update) from an
explicit null (cleared). Limits are checked again by the service, which Python callers reach
without msgspec's decoding.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

from app.channels import Channel
from app.recipients.models import Recipient, Suppression

PushProvider = Literal["fcm", "apns"]
SuppressionReason = Literal[
    "hard_bounce", "complaint", "unsubscribed", "invalid_address", "unregistered_device", "manual"
]


class PushToken(msgspec.Struct, forbid_unknown_fields=True):
    provider: PushProvider
    token: Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]


class RecipientUpdate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The PUT body: a field left out stays as it is; null clears it."""

    email: Annotated[str, msgspec.Meta(max_length=320)] | UnsetType | None = UNSET
    phone: Annotated[str, msgspec.Meta(max_length=64)] | UnsetType | None = UNSET
    push_tokens: Annotated[list[PushToken], msgspec.Meta(max_length=20)] | UnsetType | None = UNSET
    webhook_url: Annotated[str, msgspec.Meta(max_length=2048)] | UnsetType | None = UNSET
    locale: Annotated[str, msgspec.Meta(max_length=35)] | UnsetType | None = UNSET
    timezone: Annotated[str, msgspec.Meta(max_length=64)] | UnsetType | None = UNSET
    data: dict[str, Any] | UnsetType | None = UNSET


class RecipientInput(RecipientUpdate, kw_only=True):
    """A recipient with its id: an item of a batch, or an inline recipient of a notification."""

    external_id: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class RecipientBatch(msgspec.Struct, forbid_unknown_fields=True):
    recipients: list[RecipientInput]


class RecipientOut(msgspec.Struct):
    id: uuid.UUID
    object: Literal["recipient"]
    external_id: str
    email: str | None
    phone: str | None
    push_tokens: list[PushToken]
    webhook_url: str | None
    locale: str | None
    timezone: str | None
    data: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    erased_at: datetime | None

    @classmethod
    def of(cls, recipient: Recipient) -> RecipientOut:
        return cls(
            id=recipient.id,
            object="recipient",
            external_id=recipient.external_id,
            email=recipient.email,
            phone=recipient.phone,
            push_tokens=[msgspec.convert(t, PushToken) for t in recipient.push_tokens],
            webhook_url=recipient.webhook_url,
            locale=recipient.locale,
            timezone=recipient.timezone,
            data=recipient.data,
            created_at=recipient.created_at,
            updated_at=recipient.updated_at,
            erased_at=recipient.erased_at,
        )


class RecipientList(msgspec.Struct):
    object: Literal["list"]
    data: list[RecipientOut]
    has_more: bool
    next_cursor: str | None


class RecipientBatchResult(msgspec.Struct):
    object: Literal["recipient_batch"]
    created: int
    updated: int
    data: list[RecipientOut]


class Preferences(msgspec.Struct, forbid_unknown_fields=True):
    """Channel switches for every category, and per category; absent means enabled."""

    channels: dict[str, bool] = msgspec.field(default_factory=dict)
    categories: dict[str, dict[str, bool]] = msgspec.field(default_factory=dict)


class SuppressionCreate(msgspec.Struct, forbid_unknown_fields=True):
    channel: Channel
    address: Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]
    reason: SuppressionReason = "manual"
    source: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None


class SuppressionOut(msgspec.Struct):
    id: uuid.UUID
    object: Literal["suppression"]
    channel: Channel
    address: str
    reason: SuppressionReason
    source: str
    created_at: datetime

    @classmethod
    def of(cls, row: Suppression) -> SuppressionOut:
        return cls(
            id=row.id,
            object="suppression",
            channel=row.channel,  # type: ignore[arg-type]
            address=row.address,
            reason=row.reason,  # type: ignore[arg-type]
            source=row.source,
            created_at=row.created_at,
        )


class SuppressionList(msgspec.Struct):
    object: Literal["list"]
    data: list[SuppressionOut]
    has_more: bool
    next_cursor: str | None
