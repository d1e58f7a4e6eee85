"""Helpers every dashboard controller shares: rendering pages, reading forms, redirecting."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from jinja2 import Environment
from litestar import Request, Response
from litestar.datastructures import FormMultiDict
from litestar.plugins.htmx import ClientRedirect, HTMXRequest
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect, Template
from markupsafe import Markup

# Everything the pages load comes from us; nothing may frame them (clickjacking of the
# revoke buttons), and no inline script or style is needed, so none is allowed.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}

# htmx swaps 2xx/3xx and, here, 422 (a form sent back with its errors); any other 4xx/5xx
# is left unswapped and raised as an error event, which dashboard.js turns into a toast.
# Indicator styles and eval stay off so the Content-Security-Policy needs no 'unsafe-*'.
HTMX_CONFIG: dict[str, Any] = {
    "responseHandling": [
        {"code": "204", "swap": False},
        {"code": "[23]..", "swap": True},
        {"code": "422", "swap": True},
        {"code": "[45]..", "swap": False, "error": True},
    ],
    "includeIndicatorStyles": False,
    "allowEval": False,
    "allowScriptTags": False,
}


def is_htmx(request: Request[Any, Any, Any]) -> bool:
    return isinstance(request, HTMXRequest) and bool(request.htmx)


def page(template_name: str, *, status_code: int = 200, **context: Any) -> Template:
    return Template(template_name=template_name, context=context, status_code=status_code)


def see_other(request: Request[Any, Any, Any], path: str) -> Response[Any]:
    """Send the browser to `path` after a form post; htmx needs to be told to navigate."""
    if is_htmx(request):
        return ClientRedirect(redirect_to=path)
    return Redirect(path, status_code=303)


def form_text(form: FormMultiDict, name: str) -> str:
    """A text field's value; missing fields and file uploads read as empty."""
    value = form.get(name)
    return value if isinstance(value, str) else ""


def form_texts(form: FormMultiDict, name: str) -> list[str]:
    return [value for value in form.getall(name, []) if isinstance(value, str)]


def utc_text(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%d %b %Y %H:%M UTC")


def when(moment: datetime | None) -> Markup:
    """A timestamp in a table cell: short, in UTC (the column headers say so)."""
    if moment is None:
        return Markup("")
    utc = moment.astimezone(UTC)
    return Markup('<time datetime="{}">{}</time>').format(
        utc.isoformat(timespec="seconds"), utc.strftime("%d %b %Y %H:%M")
    )


def register_template_helpers(engine: JinjaTemplateEngine) -> None:
    environment: Environment = engine.engine
    environment.filters["when"] = when
    environment.filters["utc_text"] = utc_text
    environment.globals["htmx_config"] = HTMX_CONFIG
    environment.trim_blocks = True
    environment.lstrip_blocks = True
