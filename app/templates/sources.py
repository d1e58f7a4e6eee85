"""A template's stored, unrendered content: per-channel Jinja sources, and locale lookup.

Every string here is a Jinja template; webhook bodies are JSON objects whose string leaves
are. `iter_sources` lists them with their field paths, for compiling, validating and
finding out which variables a channel reads.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Annotated, Any, ClassVar

import msgspec

from app.channels import CHANNELS, Channel

Text = Annotated[str, msgspec.Meta(min_length=1)]

#: BCP 47-ish tags: "en", "fr-CA", "zh-Hant-TW" (an underscore is accepted for a hyphen).
LOCALE_PATTERN = r"^[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{1,8}){0,3}$"
_LOCALE = re.compile(LOCALE_PATTERN)
_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def _given(kind: str, *names: str) -> dict[str, Any]:
    """JSON Schema: at least one of `names` is present and not null (a `kind`)."""
    return {"anyOf": [{"required": [name], "properties": {name: {"type": kind}}} for name in names]}


# What app/templates/validation.py checks beyond these Structs, where JSON Schema can say it:
# a template's `content` has at least one channel, and e-mail has `html`, `text` or both.
AT_LEAST_ONE_CHANNEL = _given("object", *CHANNELS)
_HTML_OR_TEXT = _given("string", "html", "text")


class EmailSource(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """`html`, `text` or both."""

    openapi_extra: ClassVar[dict[str, Any]] = _HTML_OR_TEXT

    subject: Text
    html: str | None = None
    text: str | None = None


class SmsSource(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    text: Text


class PushSource(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    title: Text
    body: Text
    data: dict[str, str] = {}


class WebhookSource(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    body: dict[str, Any]


class InboxSource(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    title: Text
    body: Text
    action_url: str | None = None


class ChannelSources(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Content for some channels: a template's default content, or one locale's overrides."""

    email: EmailSource | None = None
    sms: SmsSource | None = None
    push: PushSource | None = None
    webhook: WebhookSource | None = None
    inbox: InboxSource | None = None

    @property
    def channels(self) -> list[Channel]:
        return [channel for channel in CHANNELS if getattr(self, channel) is not None]


def is_locale(tag: str) -> bool:
    return bool(_LOCALE.match(tag))


def normalise_locale(tag: str) -> str:
    return tag.replace("_", "-").lower()


def locale_candidates(*locales: str | None) -> list[str]:
    """Normalised tags to try, in the order given and each most specific first:
    ("fr-CA", "de") → ["fr-ca", "fr", "de"]. Empty and repeated tags are left out."""
    candidates: dict[str, None] = {}
    for locale in locales:
        if not locale:
            continue
        parts = normalise_locale(locale).split("-")
        candidates.update(dict.fromkeys("-".join(parts[:n]) for n in range(len(parts), 0, -1)))
    return list(candidates)


def iter_sources(channel: str, content: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(field path, Jinja source) of every template string of one channel's content."""
    for field, value in content.items():
        if field == "data" and channel == "push":
            for key, source in value.items():
                yield f"data{_member(key)}", source
        elif field == "body" and channel == "webhook":
            yield from _tree_sources(value, "body")
        elif isinstance(value, str):
            yield field, value


def _tree_sources(value: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _tree_sources(item, f"{path}{_member(key)}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _tree_sources(item, f"{path}[{index}]")


def member_path(path: str, key: str) -> str:
    return f"{path}{_member(key)}"


def _member(key: str) -> str:
    """`.name` for plain keys, `["odd key"]` otherwise, so a field path stays unambiguous."""
    return f".{key}" if _PLAIN_KEY.match(key) else f"[{json.dumps(key)}]"
