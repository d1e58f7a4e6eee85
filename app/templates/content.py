"""Rendered content, one type per channel: what the dispatcher hands to providers.

The types are a tagged union on `channel`, so `msgspec.json.encode(content)` and
`msgspec.convert(obj, Content)` round-trip, e.g. `{"channel": "sms", "text": "Hi"}`.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

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

MAX_ACTION_URL = 2048

# What `{{ unsubscribe_url }}` renders to in e-mail: rendering is shared by every recipient
# of a (notification, channel, locale), so the link of each message's own recipient takes
# its place when the message is sent (app/unsubscribe/links.py). An inert URL (`.invalid`
# never resolves), so that a preview, which has no recipient, still shows a harmless link;
# no character in it changes under HTML escaping.
UNSUBSCRIBE_URL_PLACEHOLDER = "https://unsubscribe.invalid/herald-unsubscribe-url"


def check_action_url(url: str) -> str:
    """An inbox item's link, which a tenant's front-end renders as a link: an http(s) URL or
    a path on the tenant's own site (`/orders/1`), so that data or a template cannot plant
    `javascript:` or `data:` in someone's inbox."""
    url = url.strip()
    if len(url) > MAX_ACTION_URL:
        raise ValueError(f"action_url is longer than {MAX_ACTION_URL} characters")
    if any(ord(c) < 0x21 or c == "\x7f" for c in url):
        raise ValueError("action_url contains spaces or control characters")
    parts = urlsplit(url)
    if url.startswith("/") and not url.startswith("//") and not parts.scheme:
        return url
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise ValueError("action_url must be an http:// or https:// URL, or a path such as /a/b")
    return url


def safe_action_url(url: object) -> str | None:
    """The stored link if it passes check_action_url, else None (items rendered earlier)."""
    if not isinstance(url, str):
        return None
    try:
        return check_action_url(url)
    except ValueError:
        return None
