"""Checking a template before it is saved, naming every offending field.

Shape (per-channel structs), locale tags and overrides and the source size limit are checked
here (`check_template`). Whether each source compiles in the sandbox is the render pool's to
say (`SourceCheck`, app/templates/renderer.py): compiling 64 KiB of a tenant's source can take
a second, which must not be spent on the event loop that answers everyone. A syntax error is
reported with its field (`content.email.subject`, `locales.fr.sms.text`), line and message.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from app.templates.limits import MAX_SOURCE_BYTES
from app.templates.sources import ChannelSources, is_locale, normalise_locale

KEY_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,99}$"
_KEY = re.compile(KEY_PATTERN)
MAX_NAME_LENGTH = 200

FieldError = dict[str, str]
# Compiles a template's sources (`sources_of`) somewhere safe; the fields that do not compile.
SourceCheck = Callable[[dict[str, dict[str, Any]]], Awaitable[list[FieldError]]]


class InvalidTemplate(ValueError):
    """A template cannot be saved as given; `errors` names each offending field."""

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(f"{e['field']}: {e['message']}" for e in errors))
        self.errors = errors


@dataclass(frozen=True)
class CheckedTemplate:
    """A template that passed every check, its content normalised as it will be stored."""

    name: str
    category: str | None
    default_locale: str
    content: dict[str, Any]
    locales: dict[str, Any]


def is_key(key: str) -> bool:
    return bool(_KEY.fullmatch(key))  # `$` alone would let a final newline by


def check_template(
    *,
    key: str,
    name: str | None,
    category: str | None,
    default_locale: str,
    content: Any,
    locales: Any,
) -> CheckedTemplate:
    """Return the template normalised for storage, or raise InvalidTemplate listing all errors.

    Everything but compiling: that is for a SourceCheck, given `sources_of` the result (so
    an oversized or misshapen template is refused before any compiling is paid for).
    """
    errors = _check_attributes(key, name, category, default_locale)
    sources = _check_shape("content", content, errors)
    overrides = _check_locales(locales, default_locale, sources, errors)
    if errors or sources is None:
        raise InvalidTemplate(errors)
    stored_content = msgspec.to_builtins(sources)
    stored_locales = {tag: msgspec.to_builtins(value) for tag, value in overrides.items()}
    _check_size(stored_content, stored_locales, errors)
    if errors:
        raise InvalidTemplate(errors)
    return CheckedTemplate(name or key, category, default_locale, stored_content, stored_locales)


def _check_attributes(
    key: str, name: str | None, category: str | None, default_locale: str
) -> list[FieldError]:
    errors: list[FieldError] = []
    if not is_key(key):
        errors.append(_error("key", f"a key matches {KEY_PATTERN}, e.g. order.shipped"))
    if name is not None and not (name.strip() and len(name) <= MAX_NAME_LENGTH):
        errors.append(_error("name", f"a name has 1 to {MAX_NAME_LENGTH} characters"))
    if category is not None and not is_key(category):
        errors.append(_error("category", f"a category key matches {KEY_PATTERN}"))
    if not is_locale(default_locale):
        errors.append(_error("default_locale", "a locale tag such as en or fr-CA"))
    return errors


_AT = re.compile(r" - at `\$(?P<path>[^`]*)`$")


def _check_shape(field: str, value: Any, errors: list[FieldError]) -> ChannelSources | None:
    try:
        sources = msgspec.convert(value, ChannelSources)
    except msgspec.ValidationError as error:
        message = str(error)
        at = _AT.search(message)
        if at:
            field, message = field + at.group("path"), message[: at.start()]
        errors.append(_error(field, message))
        return None
    if not sources.channels:
        errors.append(_error(field, "content for at least one channel is required"))
    if sources.email is not None and sources.email.html is None and sources.email.text is None:
        errors.append(_error(f"{field}.email", "email needs `html`, `text` or both"))
    return sources


def _check_locales(
    locales: Any,
    default_locale: str,
    sources: ChannelSources | None,
    errors: list[FieldError],
) -> dict[str, ChannelSources]:
    if not isinstance(locales, dict):
        errors.append(_error("locales", "an object of locale tag to content is required"))
        return {}
    overrides: dict[str, ChannelSources] = {}
    seen = {normalise_locale(default_locale): "the default locale, whose content is `content`"}
    for tag, value in locales.items():
        field = f"locales.{tag}"
        if not is_locale(tag):
            errors.append(_error(field, "not a locale tag such as fr or fr-CA"))
            continue
        if normalise_locale(tag) in seen:
            errors.append(_error(field, f"this is {seen[normalise_locale(tag)]}"))
            continue
        seen[normalise_locale(tag)] = f"the same locale as {field}"
        override = _check_shape(field, value, errors)
        if override is None:
            continue
        for channel in override.channels:
            if sources is not None and channel not in sources.channels:
                message = f"the template has no {channel} content for a locale to override"
                errors.append(_error(f"{field}.{channel}", message))
        overrides[tag] = override
    return overrides


def _check_size(content: Any, locales: Any, errors: list[FieldError]) -> None:
    size = len(msgspec.json.encode({"content": content, "locales": locales}))
    if size > MAX_SOURCE_BYTES:
        field = "content" if len(msgspec.json.encode(content)) > MAX_SOURCE_BYTES else "locales"
        message = f"the template is {size} bytes; content and locales may total {MAX_SOURCE_BYTES}"
        errors.append(_error(field, message))


def sources_of(checked: CheckedTemplate) -> dict[str, dict[str, Any]]:
    """What a SourceCheck compiles: the content and each locale's override, by field prefix."""
    overrides = {f"locales.{tag}": override for tag, override in checked.locales.items()}
    return {"content": checked.content, **overrides}


def _error(field: str, message: str) -> FieldError:
    return {"field": field, "message": message}
