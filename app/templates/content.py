"""Rendered content, one type per channel: what the dispatcher hands to providers.

The types are a tagged union on `channel`, so `msgspec.json.encode(content)` and
`msgspec.convert(obj, Content)` round-trip, e.g. `{"channel": "sms", "text": "Hi"}`.
"""

from __future__ import annotations

from typing import Any

import msgspec


class EmailContent(msgspec.Struct, frozen=True, tag_field="channel", tag="email"):
    subject: str
    html: str | None = None
    text: str | None = None


class SmsContent(msgspec.Struct, frozen=True, tag_field="channel", tag="sms"):
    text: str


class PushContent(msgspec.Struct, frozen=True, tag_field="channel", tag="push"):
    title: str
    body: str
    data: dict[str, str] = {}


class WebhookContent(msgspec.Struct, frozen=True, tag_field="channel", tag="webhook"):
    body: dict[str, Any]


class InboxContent(msgspec.Struct, frozen=True, tag_field="channel", tag="inbox"):
    title: str
    body: str
    action_url: str | None = None


Content = EmailContent | SmsContent | PushContent | WebhookContent | InboxContent
