"""Request and response bodies of /v1/recipients and /v1/suppressions.

Recipient bodies use msgspec's UNSET to tell a field left out (unchanged on update) from an
explicit null (cleared). Limits are checked again by the service, which Python callers reach
without msgspec's decoding.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal, Union

import msgspec
from msgspec import UNSET, UnsetType

from app.categories.keys import KEY_SCHEMA as CATEGORY_KEY_SCHEMA
from app.channels import CHANNELS, Channel
from app.recipients.models import Recipient, Suppression
from app.recipients.preferences import (
    MAX_CATEGORIES_PER_UPDATE,
    MAX_TOPICS_PER_UPDATE,
    PreferenceMap,
)
from app.recipients.validation import (
    DATA_DESCRIPTION,
    EMAIL_SCHEMA,
    EXTERNAL_ID_SCHEMA,
    LOCALE_SCHEMA,
    MAX_BATCH,
    MAX_EXTERNAL_ID,
    MAX_PUSH_TOKENS,
    MAX_TOPIC_KEY,
    PHONE_SCHEMA,
    PUSH_TOKEN_SCHEMA,
    TIMEZONE_SCHEMA,
    TOPIC_KEY_SCHEMA,
    URL_SCHEMA,
)

PushProvider = Literal["fcm", "apns"]
SuppressionReason = Literal[
    "hard_bounce", "complaint", "unsubscribed", "invalid_address", "unregistered_device", "manual"
]


def _checked(**meta: Any) -> msgspec.Meta:
    """Limits msgspec checks (`max_length`, …) with the JSON Schema of what the service
    checks besides (`schema=`, from app/recipients/validation.py)."""
    schema = meta.pop("schema", {})
    return msgspec.Meta(**meta, extra_json_schema=schema)


class PushToken(msgspec.Struct, forbid_unknown_fields=True):
    provider: PushProvider
    token: Annotated[str, _checked(min_length=1, max_length=1024, schema=PUSH_TOKEN_SCHEMA)]


Email = Annotated[str, _checked(max_length=320, schema=EMAIL_SCHEMA)]
Phone = Annotated[str, _checked(max_length=64, schema=PHONE_SCHEMA)]
Url = Annotated[str, _checked(max_length=2048, schema=URL_SCHEMA)]
Locale = Annotated[str, _checked(max_length=35, schema=LOCALE_SCHEMA)]
Timezone = Annotated[str, _checked(max_length=64, schema=TIMEZONE_SCHEMA)]
ExternalId = Annotated[
    str, _checked(min_length=1, max_length=MAX_EXTERNAL_ID, schema=EXTERNAL_ID_SCHEMA)
]
Data = Annotated[dict[str, Any], msgspec.Meta(description=DATA_DESCRIPTION)]
PushTokens = Annotated[
    list[PushToken],
    msgspec.Meta(max_length=MAX_PUSH_TOKENS, description="Repeated tokens are kept once."),
]


class RecipientUpdate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The PUT body: a field left out stays as it is; null clears it."""

    openapi_examples: ClassVar[list[dict[str, Any]]] = [
        {"email": "ada@example.com", "locale": "en", "timezone": "Europe/London"},
        {
            "phone": "+14155550123",
            "push_tokens": [{"provider": "fcm", "token": "fcm-registration-token"}],
            "webhook_url": "https://hooks.example.com/herald",
            "data": {"plan": "pro"},
        },
    ]

    email: Email | UnsetType | None = UNSET
    phone: Phone | UnsetType | None = UNSET
    push_tokens: PushTokens | UnsetType | None = UNSET
    webhook_url: Url | UnsetType | None = UNSET
    locale: Locale | UnsetType | None = UNSET
    timezone: Timezone | UnsetType | None = UNSET
    data: Data | UnsetType | None = UNSET


class RecipientInput(RecipientUpdate, kw_only=True):
    """A recipient with its id: an item of a batch, or an inline recipient of a notification."""

    openapi_examples: ClassVar[list[dict[str, Any]]] = [
        {"external_id": "user-1", "email": "ada@example.com", "locale": "en"}
    ]

    external_id: ExternalId


class RecipientBatch(msgspec.Struct, forbid_unknown_fields=True):
    """Up to 1,000 recipients; an id given twice is merged, the later item winning per field."""

    openapi_examples: ClassVar[list[dict[str, Any]]] = [
        {
            "recipients": [
                {"external_id": "user-1", "email": "ada@example.com", "locale": "en"},
                {"external_id": "user-2", "phone": "+442071838750", "timezone": "Europe/London"},
            ]
        }
    ]

    recipients: Annotated[
        list[RecipientInput],
        msgspec.Meta(extra_json_schema={"minItems": 1, "maxItems": MAX_BATCH}),
    ]


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


# Channel → enabled. Channels and keys are checked by the service (app/recipients/
# preferences.py), which names the refused one (`topics.weekly-digest.fax`); the document
# states the same rules.
ChannelSwitches = Annotated[
    dict[str, bool], msgspec.Meta(extra_json_schema={"propertyNames": {"enum": list(CHANNELS)}})
]
_CATEGORY_SWITCHES = (
    "Per category key, channel switches for the notifications of that category. The "
    "category need not exist yet."
)
_TOPIC_SWITCHES = (
    "Per topic key, channel switches for the notifications sent to that topic "
    '(`to: {"topic": key}`); category switches apply as well. The topic need not exist, nor '
    "the recipient be a member of it."
)
_TOPIC_KEYS: dict[str, Any] = {"pattern": TOPIC_KEY_SCHEMA["pattern"], "maxLength": MAX_TOPIC_KEY}


class Preferences(msgspec.Struct, forbid_unknown_fields=True):
    """The PUT body: switches to set, each channel → true or false; the others stay.
    A notification of a critical category ignores every switch."""

    openapi_examples: ClassVar[list[dict[str, Any]]] = [
        {"channels": {"sms": False}, "categories": {"marketing": {"email": False}}},
        {"topics": {"weekly-digest": {"email": False, "inbox": True}}},
    ]

    channels: Annotated[
        ChannelSwitches, msgspec.Meta(description="Switches for every category at once.")
    ] = msgspec.field(default_factory=dict)
    categories: Annotated[
        dict[str, ChannelSwitches],
        msgspec.Meta(
            description=f"{_CATEGORY_SWITCHES} At most {MAX_CATEGORIES_PER_UPDATE} categories "
            "per update.",
            extra_json_schema={
                "maxProperties": MAX_CATEGORIES_PER_UPDATE,
                "propertyNames": CATEGORY_KEY_SCHEMA,
            },
        ),
    ] = msgspec.field(default_factory=dict)
    topics: Annotated[
        dict[str, ChannelSwitches],
        msgspec.Meta(
            description=f"{_TOPIC_SWITCHES} At most {MAX_TOPICS_PER_UPDATE} topics per update.",
            extra_json_schema={
                "maxProperties": MAX_TOPICS_PER_UPDATE,
                "propertyNames": _TOPIC_KEYS,
            },
        ),
    ] = msgspec.field(default_factory=dict)


class PreferencesOut(msgspec.Struct):
    """A recipient's whole map: every channel's switch for every category, and the switches
    stored per category and per topic (a channel absent there is enabled)."""

    channels: ChannelSwitches
    categories: Annotated[
        dict[str, ChannelSwitches],
        msgspec.Meta(
            description=_CATEGORY_SWITCHES,
            extra_json_schema={"propertyNames": CATEGORY_KEY_SCHEMA},
        ),
    ]
    topics: Annotated[
        dict[str, ChannelSwitches],
        msgspec.Meta(description=_TOPIC_SWITCHES, extra_json_schema={"propertyNames": _TOPIC_KEYS}),
    ]

    @classmethod
    def of(cls, found: PreferenceMap) -> PreferencesOut:
        return cls(channels=found.channels, categories=found.categories, topics=found.topics)


_ADDRESS_SCHEMAS: dict[str, dict[str, Any]] = {
    "email": EMAIL_SCHEMA,
    "sms": PHONE_SCHEMA,
    "push": {
        "pattern": r"^(?:fcm|apns):[^\s\x1c-\x1f\x85]{1,1024}$",
        "description": "`fcm:<token>` or `apns:<token>`.",
    },
    "webhook": URL_SCHEMA,
    "inbox": {**EXTERNAL_ID_SCHEMA, "description": "The recipient's external id."},
}


def _suppression_variant(channel: Channel) -> type[msgspec.Struct]:
    """The body of POST /v1/suppressions for one channel: what its address looks like."""
    address: Any = Annotated[
        str, _checked(min_length=1, max_length=2048, schema=_ADDRESS_SCHEMAS[channel])
    ]
    return msgspec.defstruct(
        f"SuppressionCreate{channel.title()}",
        [
            ("address", address),
            ("reason", SuppressionReason, "manual"),
            ("source", Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None, None),
        ],
        tag_field="channel",
        tag=channel,
        forbid_unknown_fields=True,
        kw_only=True,
        module=__name__,
    )


class SuppressionCreate(msgspec.Struct, forbid_unknown_fields=True):
    """An address to suppress: its form depends on `channel` (the OpenAPI discriminator)."""

    openapi_type: ClassVar[Any] = Union[tuple(_suppression_variant(c) for c in CHANNELS)]  # noqa: UP007
    openapi_examples: ClassVar[list[dict[str, Any]]] = [
        {"channel": "email", "address": "bounced@example.com", "reason": "hard_bounce"},
        {"channel": "sms", "address": "+14155550123", "source": "support ticket 4411"},
        {
            "channel": "push",
            "address": "fcm:fcm-registration-token",
            "reason": "unregistered_device",
        },
        {"channel": "webhook", "address": "https://hooks.example.com/old"},
        {"channel": "inbox", "address": "user-1", "reason": "unsubscribed"},
    ]

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
