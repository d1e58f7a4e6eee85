"""Previewing a template that is not saved yet: the dashboard's editor, as its author types.

A draft is checked as a save checks it (shape, locales, size: validation.py), its sources
compiled in the render pool (a syntax error comes back with its field and line), then the
one channel and locale asked for is rendered in the pool within the tenant's render budget,
as `POST /v1/templates/{key}/preview` renders a saved version (app/templates/renderer.py).
Nothing here renders Jinja in the caller's process: a hostile draft (a loop of a billion
turns, a string of a gigabyte) costs a render process its deadline, never the dashboard.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
from redis.asyncio import Redis

from app.templates.content import Content, SmsContent
from app.templates.isolation import RenderJob
from app.templates.models import TemplateVersion
from app.templates.renderer import Renderer
from app.templates.rendering import RenderFailed
from app.templates.sms import SmsSegments, count_segments
from app.templates.validation import InvalidTemplate, check_template, sources_of

# Compiled drafts are cached in the render processes by (template id, field): a draft's id
# is a digest of its sources, so an unchanged draft is compiled once, an edited one afresh.
_DRAFTS = uuid.UUID("6d1f4c0e-6f2a-4bde-9a43-2f1d8c1b7e55")
_LINE = re.compile(r"^line (?P<line>\d+): (?P<message>.*)$", re.S)
# How long a rendered e-mail's HTML stays where its preview frame can load it.
HTML_PREVIEW_SECONDS = 600
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{24}$")


@dataclass(frozen=True)
class Draft:
    """A template as its editor holds it: the content and locale overrides as they would
    be saved (app/templates/sources.py), and the locale `content` is written in."""

    content: dict[str, Any]
    locales: dict[str, Any] = field(default_factory=dict)
    default_locale: str = "en"


@dataclass(frozen=True)
class DraftError:
    """What stops a draft: its field from the template's top (`locales.fr.sms.text`),
    the line of that field's source when known, and what is wrong."""

    field: str
    message: str
    line: int | None = None


@dataclass(frozen=True)
class DraftPreview:
    """One channel of a draft rendered for one locale, or the errors that stopped it."""

    channel: str
    locale: str  # the locale whose content was rendered (after fallback)
    content: Content | None = None
    errors: list[DraftError] = field(default_factory=list)
    sms: SmsSegments | None = None
    absent: bool = False  # the draft has no content for the channel: nothing to render


def _line_error(where: str, message: str) -> DraftError:
    found = _LINE.match(message)
    if found is None:
        return DraftError(where, message)
    return DraftError(where, found.group("message"), int(found.group("line")))


def _draft_id(tenant_id: uuid.UUID, key: str, draft: Draft) -> uuid.UUID:
    body = msgspec.json.encode(
        [str(tenant_id), key, draft.default_locale, draft.content, draft.locales]
    )
    return uuid.uuid5(_DRAFTS, hashlib.sha256(body).hexdigest())


async def preview_draft(
    renderer: Renderer,
    *,
    tenant_id: uuid.UUID,
    mode: str,
    plan: str,
    key: str,
    draft: Draft,
    channel: str,
    locale: str | None,
    tenant_locale: str | None,
    data: dict[str, Any],
    recipient: dict[str, Any] | None = None,
) -> DraftPreview:
    """Render `channel` of the draft for `locale` (falling back as a send does: the
    tenant's default locale, then the draft's own content) with sample `data`.

    Raises OverBudget (app/templates/renderer.py) when the tenant's render budget cannot
    cover it now, as the API's preview does."""
    try:
        checked = check_template(
            key=key,
            name=None,
            category=None,
            default_locale=draft.default_locale,
            content=draft.content,
            locales=draft.locales,
        )
    except InvalidTemplate as invalid:
        errors = [DraftError(e["field"], e["message"]) for e in invalid.errors]
        return DraftPreview(channel, locale or draft.default_locale, errors=errors)
    failed = await renderer.check(
        tenant_id=tenant_id, mode=mode, plan=plan, sources=sources_of(checked)
    )
    if failed:
        errors = [_line_error(e["field"], e["message"]) for e in failed]
        return DraftPreview(channel, locale or draft.default_locale, errors=errors)
    version = TemplateVersion(
        id=_draft_id(tenant_id, key, draft),
        tenant_id=tenant_id,
        key=key,
        version=0,
        name=key,
        category=None,
        default_locale=checked.default_locale,
        content=checked.content,
        locales=checked.locales,
        created_at=datetime.now(UTC),
        created_by="draft",
    )
    found = version.content_for(channel, locale, tenant_locale)
    if found is None:
        return DraftPreview(channel, locale or draft.default_locale, absent=True)
    [outcome] = await renderer.preview(
        tenant_id=tenant_id,
        mode=mode,
        plan=plan,
        template=version,
        data=data,
        jobs=[RenderJob(channel, locale, (tenant_locale,), recipient)],
    )
    if isinstance(outcome, RenderFailed):
        error = DraftError(f"{found.path}.{outcome.field}", str(outcome), outcome.line)
        return DraftPreview(channel, found.locale, errors=[error])
    sms = count_segments(outcome.text) if isinstance(outcome, SmsContent) else None
    return DraftPreview(channel, found.locale, content=outcome, sms=sms)


def _html_key(tenant_id: uuid.UUID, mode: str, token: str) -> str:
    return f"template-preview:{{{tenant_id}}}:{mode}:{token}"


async def keep_html(redis: Redis, *, tenant_id: uuid.UUID, mode: str, html: str) -> str:
    """Keep a preview's rendered e-mail HTML for HTML_PREVIEW_SECONDS; the token that loads
    it (for the same tenant and mode only). The page shows it in a frame of its own, served
    with a policy that lets the e-mail's inline styles apply and nothing run."""
    token = secrets.token_urlsafe(18)
    await redis.set(_html_key(tenant_id, mode, token), html.encode(), ex=HTML_PREVIEW_SECONDS)
    return token


async def kept_html(redis: Redis, *, tenant_id: uuid.UUID, mode: str, token: str) -> str | None:
    """The HTML `keep_html` kept under `token` for this tenant and mode; None when there is
    none (expired, another tenant's or mode's, or not a token)."""
    if not _TOKEN.fullmatch(token):
        return None
    html = await redis.get(_html_key(tenant_id, mode, token))
    return None if html is None else bytes(html).decode()
