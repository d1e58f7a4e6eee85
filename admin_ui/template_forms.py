"""The template editor's form: what its fields are called, and reading them into a draft.

One form holds a whole template: the default content, each locale's overrides, the
template's name, category and default locale, the sample data the preview renders with,
and which channel and locale the preview shows. Field names are the paths the template
service names in its errors (`content.email.subject`, `locales.fr.sms.text`), so an error
finds its field by name. A channel is part of the template when its `channels` box (for a
locale, `channels.<tag>`) is ticked; its fields are read only then.

Every value is bounded before anything else sees it: a source may be no longer than a
whole template may be (MAX_SOURCE_BYTES), the sample data and recipient no longer than a
notification's data (MAX_DATA_BYTES), locales at most MAX_LOCALES.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec
from litestar.datastructures import FormMultiDict

from admin_ui.pages import form_text, form_texts
from app.channels import CHANNELS
from app.inputs import decode_json_body
from app.notifications.schemas import MAX_DATA_BYTES
from app.problems import Problem
from app.templates.drafts import Draft
from app.templates.limits import MAX_SOURCE_BYTES
from app.templates.models import TemplateVersion
from app.templates.sources import is_locale
from app.templates.validation import MAX_NAME_LENGTH

MAX_LOCALES = 30
MAX_LOCALE_LENGTH = 35  # the templates.default_locale column
MAX_CATEGORY_LENGTH = 100

CHANNEL_LABELS: Final = {
    "email": "Email",
    "sms": "SMS",
    "push": "Push",
    "inbox": "In-app",
    "webhook": "Webhook",
}
# The editor's tab order: the channels people write most first.
EDITOR_CHANNELS: Final = ("email", "sms", "push", "inbox", "webhook")


@dataclass(frozen=True)
class SourceField:
    name: str  # the field in the channel's content
    label: str
    kind: str  # "line" (one-line input), "code" (textarea) or "json" (a JSON object)
    required: bool = False
    hint: str = ""


CHANNEL_FIELDS: Final[dict[str, tuple[SourceField, ...]]] = {
    "email": (
        SourceField("subject", "Subject", "line", required=True),
        SourceField("html", "HTML body", "code", hint="HTML; values are escaped."),
        SourceField("text", "Text body", "code", hint="Plain text; html, text or both."),
    ),
    "sms": (SourceField("text", "Text", "code", required=True),),
    "push": (
        SourceField("title", "Title", "line", required=True),
        SourceField("body", "Body", "code", required=True),
        SourceField("data", "Data", "json", hint='A JSON object of strings, e.g. {"url": "/o/1"}.'),
    ),
    "inbox": (
        SourceField("title", "Title", "line", required=True),
        SourceField("body", "Body", "code", required=True),
        SourceField("action_url", "Link", "line", hint="An https:// URL or a path such as /o/1."),
    ),
    "webhook": (
        SourceField(
            "body", "Body", "json", required=True, hint="A JSON object; strings are templates."
        ),
    ),
}

# Content for a new template's channels, so that its editor starts from something that
# renders: the sample data below has `name`.
STARTER: Final[dict[str, dict[str, Any]]] = {
    "email": {"subject": "Hello {{ name }}", "text": "Hi {{ name }},\n\nThanks for signing up."},
    "sms": {"text": "Hi {{ name }}, thanks for signing up."},
    "push": {"title": "Hello {{ name }}", "body": "Thanks for signing up."},
    "inbox": {"title": "Welcome, {{ name }}", "body": "Thanks for signing up."},
    "webhook": {"body": {"event": "welcome", "name": "{{ name }}"}},
}
STARTER_DATA = '{\n  "name": "Ada"\n}'


class FormInvalid(Exception):
    """Fields of the form that cannot be read: {field name: what is wrong}."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{name}: {message}" for name, message in errors.items()))
        self.errors = errors


def field_name(where: str, channel: str, name: str) -> str:
    """`content.email.subject`, `locales.fr.email.subject`."""
    return f"{where}.{channel}.{name}"


def where_of(locale: str) -> str:
    """Where a locale's sources live: `content` for the default, else `locales.<tag>`."""
    return f"locales.{locale}" if locale else "content"


@dataclass
class EditorForm:
    """The editor's values as text, as the page shows them and as they were sent."""

    name: str = ""
    category: str = ""
    default_locale: str = "en"
    locales: list[str] = field(default_factory=list)  # override tags, in the form's order
    # (where, channel) ticked: ("content", "email"), ("locales.fr", "sms")
    channels: set[tuple[str, str]] = field(default_factory=set)
    values: dict[str, str] = field(default_factory=dict)  # field name -> text
    data: str = STARTER_DATA
    recipient: str = ""
    preview_channel: str = "email"
    preview_locale: str = ""

    def value(self, where: str, channel: str, name: str) -> str:
        return self.values.get(field_name(where, channel, name), "")

    def has(self, where: str, channel: str) -> bool:
        return (where, channel) in self.channels

    @classmethod
    def of(cls, template: TemplateVersion) -> EditorForm:
        """The form showing a saved version."""
        form = cls(
            name=template.name,
            category=template.category or "",
            default_locale=template.default_locale,
            locales=list(template.locales),
        )
        form.preview_channel = next((c for c in EDITOR_CHANNELS if c in template.content), "email")
        for where, content in [
            ("content", template.content),
            *((where_of(tag), value) for tag, value in template.locales.items()),
        ]:
            for channel, fields in content.items():
                form.channels.add((where, channel))
                for source in CHANNEL_FIELDS.get(channel, ()):
                    value = fields.get(source.name)
                    if value is None:
                        continue
                    text = json_text(value) if source.kind == "json" else str(value)
                    form.values[field_name(where, channel, source.name)] = text
        return form

    @classmethod
    def starter(cls, name: str, channels: Sequence[str]) -> EditorForm:
        form = cls(name=name, preview_channel=channels[0] if channels else "email")
        for channel in channels:
            form.channels.add(("content", channel))
            for source in CHANNEL_FIELDS[channel]:
                value = STARTER[channel].get(source.name)
                if value is not None:
                    text = json_text(value) if source.kind == "json" else str(value)
                    form.values[field_name("content", channel, source.name)] = text
        return form

    @classmethod
    def read(cls, form: FormMultiDict) -> EditorForm:
        """The form as sent, bounded; raises FormInvalid naming fields that cannot be kept."""
        errors: dict[str, str] = {}
        name = _bounded(form, "name", MAX_NAME_LENGTH, errors).strip()
        category = _bounded(form, "category", MAX_CATEGORY_LENGTH, errors).strip()
        default_locale = _bounded(form, "default_locale", MAX_LOCALE_LENGTH, errors).strip()
        locales: list[str] = []
        for tag in form_texts(form, "locale"):
            tag = tag.strip()
            if not is_locale(tag) or len(tag) > MAX_LOCALE_LENGTH:
                errors["locale"] = "a locale tag such as fr or fr-CA"
            elif tag not in locales:
                locales.append(tag)
        if len(locales) > MAX_LOCALES:
            errors["locale"] = f"at most {MAX_LOCALES} locales"
            locales = locales[:MAX_LOCALES]
        read = cls(
            name=name,
            category=category,
            default_locale=default_locale or "en",
            locales=locales,
            data=_bounded(form, "data", MAX_DATA_BYTES, errors),
            recipient=_bounded(form, "recipient", MAX_DATA_BYTES, errors),
        )
        for where in ["content", *(where_of(tag) for tag in locales)]:
            ticked = set(form_texts(form, f"channels.{where}"))
            for channel in CHANNELS:
                if channel in ticked:
                    read.channels.add((where, channel))
                for source in CHANNEL_FIELDS[channel]:
                    name_ = field_name(where, channel, source.name)
                    read.values[name_] = _bounded(form, name_, MAX_SOURCE_BYTES, errors)
        shown = form_text(form, "preview_channel")
        read.preview_channel = shown if shown in CHANNELS else "email"
        locale = form_text(form, "preview_locale")
        read.preview_locale = locale if locale in locales else ""
        if errors:
            raise FormInvalid(errors)
        return read

    def draft(self) -> Draft:
        """The template the form describes; raises FormInvalid for JSON that does not parse
        (the template service checks everything else, naming the same fields)."""
        errors: dict[str, str] = {}
        content = self._content("content", errors)
        locales = {tag: self._content(where_of(tag), errors) for tag in self.locales}
        if errors:
            raise FormInvalid(errors)
        return Draft(content=content, locales=locales, default_locale=self.default_locale)

    def _content(self, where: str, errors: dict[str, str]) -> dict[str, Any]:
        content: dict[str, Any] = {}
        for channel in CHANNELS:
            if not self.has(where, channel):
                continue
            fields: dict[str, Any] = {}
            for source in CHANNEL_FIELDS[channel]:
                name = field_name(where, channel, source.name)
                text = self.values.get(name, "")
                if source.kind == "json":
                    if text.strip():  # blank and required: the service names the field
                        fields[source.name] = _json_object(name, text, errors)
                elif text or source.required:
                    fields[source.name] = text
            content[channel] = fields
        return content

    def sample_data(self) -> dict[str, Any]:
        """The sample data, a JSON object; raises FormInvalid naming `data`."""
        errors: dict[str, str] = {}
        data = _json_object("data", self.data, errors) if self.data.strip() else {}
        if errors:
            raise FormInvalid(errors)
        return data

    def sample_recipient(self) -> dict[str, Any] | None:
        """The sample recipient (None when blank); raises FormInvalid naming `recipient`."""
        if not self.recipient.strip():
            return None
        errors: dict[str, str] = {}
        recipient = _json_object("recipient", self.recipient, errors)
        if errors:
            raise FormInvalid(errors)
        return recipient


def _bounded(form: FormMultiDict, name: str, limit: int, errors: dict[str, str]) -> str:
    value = form_text(form, name).replace("\r\n", "\n")
    if len(value.encode()) > limit:
        errors[name] = f"at most {limit} bytes"
        return ""
    return value


def _json_object(name: str, text: str, errors: dict[str, str]) -> dict[str, Any]:
    try:
        value = decode_json_body(text.encode())
    except Problem as problem:
        errors[name] = _json_message(problem.detail)
        return {}
    if not isinstance(value, dict):
        errors[name] = 'a JSON object is required, e.g. {"name": "Ada"}'
        return {}
    return value


def _json_message(detail: str) -> str:
    return detail.replace("The body", "This").replace("the body", "this")


def json_text(value: Any) -> str:
    """A JSON value as the editor shows it: indented."""
    return msgspec.json.format(msgspec.json.encode(value), indent=2).decode()


_SEGMENT = re.compile(r'\.([A-Za-z_][A-Za-z0-9_-]*)|\[("(?:[^"\\]|\\.)*"|\d+)\]')


def form_field_of(path: str) -> str | None:
    """The editor field that holds the source an error names: `content.push.data.url` and
    `content.webhook.body.items[0].id` are in the JSON fields `content.push.data` and
    `content.webhook.body`; `content.email.subject` is its own. None: not one field."""
    parts = [m.group(1) or m.group(2) for m in _SEGMENT.finditer("." + path)]
    size = 3 if parts[:1] == ["content"] else 4 if parts[:1] == ["locales"] else 0
    if not size or len(parts) < size:
        return None
    name = ".".join(parts[:size])
    channel, source = parts[size - 2], parts[size - 1]
    known = {f.name for f in CHANNEL_FIELDS.get(channel, ())}
    return name if source in known else None
