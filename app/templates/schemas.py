"""Request and response bodies of the template endpoints."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

import msgspec

from app.channels import CHANNELS, Channel
from app.db import MAX_INT4
from app.templates.content import Content
from app.templates.models import TemplateVersion
from app.templates.sms import Encoding
from app.templates.sources import AT_LEAST_ONE_CHANNEL, LOCALE_PATTERN, ChannelSources
from app.templates.validation import KEY_PATTERN

# Not only whitespace; \x1c-\x1f and \x85 are whitespace to Python's str.strip.
_NOT_BLANK = r"[^\s\x1c-\x1f\x85]"
_LOCALE = {"pattern": LOCALE_PATTERN}


class TemplateWrite(msgspec.Struct, forbid_unknown_fields=True):
    """The body of `PUT /v1/templates/{key}`: the content of the next version.

    Every source must compile as a Jinja template of the sandbox; a locale overrides only
    channels `content` has; `category` must exist; content and locales total at most
    64 KiB of JSON (`MAX_SOURCE_BYTES`)."""

    openapi_examples: ClassVar[list[dict[str, Any]]] = [
        {
            "name": "Welcome",
            "content": {
                "email": {"subject": "Hi {{ name }}", "text": "Welcome, {{ name }}!"},
                "inbox": {"title": "Welcome", "body": "Hi {{ name }}"},
            },
        },
        {
            "name": "Order shipped",
            "default_locale": "en",
            "content": {
                "sms": {"text": "Order {{ order_id }} is on its way."},
                "push": {"title": "Shipped", "body": "Order {{ order_id }}"},
                "webhook": {"body": {"event": "order.shipped", "order": "{{ order_id }}"}},
            },
            "locales": {"fr-CA": {"sms": {"text": "La commande {{ order_id }} est partie."}}},
        },
    ]

    content: Annotated[ChannelSources, msgspec.Meta(extra_json_schema=AT_LEAST_ONE_CHANNEL)]
    locales: Annotated[
        dict[str, ChannelSources], msgspec.Meta(extra_json_schema={"propertyNames": _LOCALE})
    ] = {}
    name: (
        Annotated[
            str,
            msgspec.Meta(min_length=1, max_length=200, extra_json_schema={"pattern": _NOT_BLANK}),
        ]
        | None
    ) = None
    category: Annotated[str, msgspec.Meta(extra_json_schema={"pattern": KEY_PATTERN})] | None = None
    default_locale: Annotated[str, msgspec.Meta(extra_json_schema=_LOCALE)] = "en"


class TemplateSummary(msgspec.Struct):
    id: uuid.UUID
    object: Literal["template"]
    key: str
    version: int
    name: str
    category: str | None
    default_locale: str
    channels: list[Channel]
    locale_names: list[str]
    created_at: datetime
    created_by: str

    @classmethod
    def fields_of(cls, template: TemplateVersion) -> dict[str, Any]:
        return {
            "id": template.id,
            "object": "template",
            "key": template.key,
            "version": template.version,
            "name": template.name,
            "category": template.category,
            "default_locale": template.default_locale,
            "channels": [channel for channel in CHANNELS if channel in template.content],
            "locale_names": sorted(template.locales),
            "created_at": template.created_at,
            "created_by": template.created_by,
        }

    @classmethod
    def of(cls, template: TemplateVersion) -> TemplateSummary:
        return cls(**cls.fields_of(template))


class TemplateOut(TemplateSummary):
    """One version, with its content and every locale's overrides."""

    content: ChannelSources
    locales: dict[str, ChannelSources]

    @classmethod
    def of(cls, template: TemplateVersion) -> TemplateOut:
        return cls(
            **cls.fields_of(template),
            content=msgspec.convert(template.content, ChannelSources),
            locales=msgspec.convert(template.locales, dict[str, ChannelSources]),
        )


class TemplateList(msgspec.Struct):
    object: Literal["list"]
    data: list[TemplateSummary]
    has_more: bool
    next_cursor: str | None


class TemplateDeleted(msgspec.Struct):
    object: Literal["template"]
    key: str
    deleted: bool
    versions_deleted: int


class PreviewRequest(msgspec.Struct, forbid_unknown_fields=True):
    """The body of `POST /v1/templates/{key}/preview`."""

    data: dict[str, Any] = {}
    recipient: dict[str, Any] | None = None
    locale: str | None = None
    version: Annotated[int, msgspec.Meta(ge=1, le=MAX_INT4)] | None = None


class PreviewError(msgspec.Struct):
    field: str
    message: str


class SmsStats(msgspec.Struct):
    length: int
    encoding: Encoding
    segments: int


class ChannelPreview(msgspec.Struct, omit_defaults=True):
    """One channel: its rendered content, or the error that stopped it."""

    locale: str
    ok: bool
    content: Content | None = None
    error: PreviewError | None = None
    sms: SmsStats | None = None


class TemplatePreview(msgspec.Struct):
    object: Literal["template_preview"]
    key: str
    version: int
    locale: str | None
    channels: dict[str, ChannelPreview]
