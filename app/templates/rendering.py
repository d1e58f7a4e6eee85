"""Rendering one channel of a template version, in the sandbox and within the limits.

The context is the notification's `data`, key by key at the top level, plus `recipient` (a
dict) when a recipient is given; a `recipient` key in `data` is ignored, so that a template
reads the same thing whether it is rendered once for everyone or once per recipient. E-mail
also has `unsubscribe_url`, rendered as a placeholder each message's own link replaces at
send time (app/unsubscribe/links.py). Names that are not defined are errors
(StrictUndefined), reported with the field they occur in.

Only email `html` is autoescaped. Compiled templates are cached by (version id, source
path): versions are immutable, so an entry never goes stale.

Rendered text is refused when it holds NUL (`"\\x00"` in a template, `'%c' % 0`) or a lone
surrogate (`"\\ud800"`): PostgreSQL stores neither in text or jsonb, and no channel can
carry them. Refused rather than stripped: a message quietly different from what its
template says is worse than one that fails naming the field, and tenant data cannot hold
them (the API refuses them), so only the template itself can be at fault. Error messages,
which can quote template values, are cleaned of both the same way and shortened.
"""

from __future__ import annotations

import contextlib
import re
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Generic, TypeVar

import jinja2
from jinja2 import meta, nodes

from app.templates.content import (
    UNSUBSCRIBE_URL_PLACEHOLDER,
    Content,
    EmailContent,
    InboxContent,
    PushContent,
    SmsContent,
    WebhookContent,
    check_action_url,
)
from app.templates.guards import LimitExceeded, metered, tick
from app.templates.limits import MAX_OUTPUT_BYTES, RENDER_TIMEOUT_SECONDS
from app.templates.models import TemplateVersion
from app.templates.sandbox import TemplateSandbox
from app.templates.sources import iter_sources, member_path

COMPILE_CACHE_SIZE = 1024

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class RenderFailed(ValueError):
    """A channel could not be rendered; `field` says where ("email.subject") and, when the
    failure happened in the template's own code, `line` says at which line of that field."""

    def __init__(self, field: str, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.line = line


_TEXT = TemplateSandbox(autoescape=False)
_HTML = TemplateSandbox(autoescape=True)


def environment_for(channel: str, field: str) -> TemplateSandbox:
    """Email html is HTML; every other field is text and must not be entity-escaped."""
    return _HTML if (channel, field) == ("email", "html") else _TEXT


class _Lru(Generic[K, V]):
    """A small thread-safe LRU map (renders may run in worker threads)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get_or_make(self, key: K, make: Callable[[], V]) -> V:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = make()  # outside the lock: compiling may take a while; a duplicate is harmless
        with self._lock:
            self._items[key] = value
            if len(self._items) > self._size:
                self._items.popitem(last=False)
        return value


_compiled: _Lru[tuple[uuid.UUID, str], jinja2.Template] = _Lru(COMPILE_CACHE_SIZE)
_personalised: _Lru[tuple[uuid.UUID, str, str], bool] = _Lru(4 * COMPILE_CACHE_SIZE)


def render(
    template: TemplateVersion,
    channel: str,
    *,
    locale: str | None,
    data: dict[str, Any],
    recipient: dict[str, Any] | None,
    fallback: Sequence[str | None] = (),
) -> Content:
    """Render one channel for `locale`, else the first of `fallback` the template has, else
    its default content; raises RenderFailed naming the field."""
    found = template.content_for(channel, locale, *fallback)
    if found is None:
        raise RenderFailed(channel, f"template {template.key!r} has no {channel} content")
    compiled = {
        field: _compile(template.id, f"{found.path}.{channel}.{field}", channel, field, source)
        for field, source in iter_sources(channel, found.content)
    }
    context = _context(data, recipient)
    if channel == "email":
        # Always the placeholder, even when `data` has an `unsubscribe_url` of its own: the
        # link is Herald's to give, per recipient, at send time.
        context["unsubscribe_url"] = UNSUBSCRIBE_URL_PLACEHOLDER
    fields = _FieldRenderer(channel, compiled, context)
    with metered(RENDER_TIMEOUT_SECONDS):  # compiling above is not the template's time
        return _build(channel, found.content, fields)


def prepare(
    template: TemplateVersion,
    channel: str,
    *,
    locale: str | None,
    fallback: Sequence[str | None] = (),
) -> None:
    """Compile (and cache) what `render` of the same arguments will need; a source that does
    not compile is left for `render` to report."""
    found = template.content_for(channel, locale, *fallback)
    if found is None:
        return
    for field, source in iter_sources(channel, found.content):
        with contextlib.suppress(RenderFailed):
            _compile(template.id, f"{found.path}.{channel}.{field}", channel, field, source)


def _compile(
    template_id: uuid.UUID, path: str, channel: str, field: str, source: str
) -> jinja2.Template:
    def make() -> jinja2.Template:
        try:
            return environment_for(channel, field).from_string(source)
        except jinja2.TemplateSyntaxError as error:  # refused at save; only old rows get here
            message = f"line {error.lineno}: {error.message}"
            raise RenderFailed(f"{channel}.{field}", message) from error

    return _compiled.get_or_make((template_id, path), make)


def is_personalised(
    template: TemplateVersion, channel: str, locale: str | None, fallback: Sequence[str | None] = ()
) -> bool:
    """Whether the channel's content (after locale fallback) reads `recipient`."""
    found = template.content_for(channel, locale, *fallback)
    if found is None:
        return False
    return _personalised.get_or_make(
        (template.id, found.path, channel), lambda: _reads_recipient(channel, found.content)
    )


def _reads_recipient(channel: str, content: dict[str, Any]) -> bool:
    for field, source in iter_sources(channel, content):
        try:
            tree = environment_for(channel, field).parse(source)
        except jinja2.TemplateSyntaxError:
            return True  # cannot tell; rendering per recipient is the safe answer
        if "recipient" in meta.find_undeclared_variables(tree):
            return True
    return False


def source_errors(channel: str, content: dict[str, Any]) -> list[tuple[str, str]]:
    """(field, message) for every source of the channel that does not compile."""
    errors: list[tuple[str, str]] = []
    for field, source in iter_sources(channel, content):
        message = _compile_error(environment_for(channel, field), source)
        if message is not None:
            errors.append((field, message))
    return errors


_NOT_ALLOWED = (nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)


def _compile_error(env: TemplateSandbox, source: str) -> str | None:
    try:
        for node in env.parse(source).find_all(_NOT_ALLOWED):
            return f"line {node.lineno}: templates cannot include, import or extend others"
        env.from_string(source)
    except jinja2.TemplateSyntaxError as error:
        return f"line {error.lineno}: {error.message}"
    except (RecursionError, MemoryError, SyntaxError, LimitExceeded) as error:
        # A 64 KiB source nested deeply enough can defeat the parser or Python's compiler.
        return f"cannot be compiled: {type(error).__name__}"
    return None


def _context(data: dict[str, Any], recipient: dict[str, Any] | None) -> dict[str, Any]:
    context = {key: value for key, value in data.items() if key != "recipient"}
    if recipient is not None:
        context["recipient"] = recipient
    return context


class _FieldRenderer:
    """Renders fields of one channel by path, keeping the channel's output under the limit."""

    def __init__(
        self, channel: str, compiled: dict[str, jinja2.Template], context: dict[str, Any]
    ) -> None:
        self.channel = channel
        self.compiled = compiled
        self.context = context
        self.size = 0

    def __call__(self, field: str) -> str:
        name = f"{self.channel}.{field}"
        try:
            text = _generate(self.compiled[field], self.context)
        except Exception as error:  # anything a template raises is the template's failure
            raise RenderFailed(name, _describe(error), _template_line(error)) from error
        if "\x00" in text:
            raise RenderFailed(name, "the rendered text holds NUL (\\u0000): no channel carries it")
        try:
            encoded = text.encode()
        except UnicodeEncodeError:
            raise RenderFailed(
                name, "the rendered text holds a lone surrogate (such as \\ud800): not Unicode"
            ) from None
        self.size += len(encoded)
        if self.size > MAX_OUTPUT_BYTES:
            raise RenderFailed(
                name, f"the rendered {self.channel} is larger than {MAX_OUTPUT_BYTES} bytes"
            )
        return text


def _generate(template: jinja2.Template, context: dict[str, Any]) -> str:
    chunks: list[str] = []
    size = 0
    for chunk in template.generate(context):
        tick()
        size += len(chunk)
        if size > MAX_OUTPUT_BYTES:
            raise LimitExceeded(f"the output is larger than {MAX_OUTPUT_BYTES} bytes")
        chunks.append(chunk)
    return "".join(chunks)


def _template_line(error: BaseException) -> int | None:
    """The line of the template where `error` was raised: Jinja rewrites the traceback so
    that a template's frames are named `<template>` and carry its own line numbers."""
    line = None
    trace = error.__traceback__
    while trace is not None:
        if trace.tb_frame.f_code.co_filename == "<template>":
            line = trace.tb_lineno
        trace = trace.tb_next
    return line


MAX_ERROR_CHARS = 500


def _describe(error: Exception) -> str:
    if isinstance(error, RecursionError):
        return "recursion too deep (a macro calling itself without end, or nesting too deep)"
    if isinstance(error, MemoryError):
        return "the render ran out of memory"
    return clean_message(str(error) or type(error).__name__)


def clean_message(message: str) -> str:
    """A message fit for a text column and JSON: no NUL, no lone surrogate, not too long."""
    message = message.replace("\x00", "\\x00")
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(message) > MAX_ERROR_CHARS:
        message = message[: MAX_ERROR_CHARS - 1] + "…"
    return message


_LINE_BREAKS = re.compile(r"[\r\n]+")


def _build(channel: str, content: dict[str, Any], field: Callable[[str], str]) -> Content:
    def optional(name: str) -> str | None:
        return field(name) if content.get(name) is not None else None

    if channel == "email":
        # A subject is one header line: a line break in it would let data inject headers.
        subject = _LINE_BREAKS.sub(" ", field("subject")).strip()
        return EmailContent(subject=subject, html=optional("html"), text=optional("text"))
    if channel == "sms":
        return SmsContent(text=field("text"))
    if channel == "push":
        data = {key: field(member_path("data", key)) for key in content.get("data", {})}
        return PushContent(title=field("title"), body=field("body"), data=data)
    if channel == "webhook":
        return WebhookContent(body=_render_tree(content["body"], "body", field))
    if channel == "inbox":
        return InboxContent(
            title=field("title"), body=field("body"), action_url=_action_url(optional("action_url"))
        )
    raise RenderFailed(channel, f"unknown channel {channel!r}")


def _action_url(url: str | None) -> str | None:
    if url is None:
        return None
    try:
        return check_action_url(url)
    except ValueError as refused:
        raise RenderFailed("inbox.action_url", str(refused)) from None


def _render_tree(value: Any, path: str, field: Callable[[str], str]) -> Any:
    """A webhook body with each string leaf rendered; other JSON values stay as they are."""
    if isinstance(value, str):
        return field(path)
    if isinstance(value, dict):
        return {
            key: _render_tree(item, member_path(path, key), field) for key, item in value.items()
        }
    if isinstance(value, list):
        return [_render_tree(item, f"{path}[{index}]", field) for index, item in enumerate(value)]
    return value
