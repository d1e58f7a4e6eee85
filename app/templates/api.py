"""/v1/templates: save versions, read, list, delete and preview the tenant's templates.

Writes need scope `manage`, reads and previews `read`. Previews render in the render pool
within the tenant's render budget (app/templates/renderer.py): over it, 429.
"""

from __future__ import annotations

import math
import uuid
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, delete, get, post, put
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from app.auth.keys import Principal
from app.auth.middleware import requires_scope
from app.db import MAX_INT4
from app.dependencies import DbSession
from app.pagination import MAX_LIMIT
from app.problems import Problem, field_error
from app.templates import service
from app.templates.content import Content, SmsContent
from app.templates.isolation import RenderJob
from app.templates.models import TemplateVersion
from app.templates.renderer import OverBudget, Renderer
from app.templates.rendering import RenderFailed
from app.templates.schemas import (
    ChannelPreview,
    PreviewError,
    PreviewRequest,
    SmsStats,
    TemplateDeleted,
    TemplateList,
    TemplateOut,
    TemplatePreview,
    TemplateSummary,
    TemplateWrite,
)
from app.templates.sms import count_segments
from app.templates.sources import is_locale
from app.templates.validation import KEY_PATTERN, FieldError, InvalidTemplate, is_key
from app.tenants.delivery_controls import get_delivery_settings

ApiRequest = Request[Principal, None, Any]
Version = Annotated[int | None, QueryParameter(ge=1, le=MAX_INT4)]


def _checked_key(key: str) -> str:
    if not is_key(key):
        raise field_error("key", f"a template key matches {KEY_PATTERN}")
    return key


def _not_found(key: str, mode: str, version: int | None = None) -> Problem:
    what = f"version {version} of template" if version is not None else "template"
    return Problem(404, "not_found", f"No {what} {key!r} in {mode} mode.")


def _invalid(error: InvalidTemplate) -> Problem:
    return Problem(422, "validation_error", str(error), errors=error.errors)


async def _template(
    db_session: DbSession, request: ApiRequest, key: str, version: int | None
) -> TemplateVersion:
    template = await service.get_template(
        db_session,
        tenant_id=request.user.tenant_id,
        mode=request.user.mode,
        key=_checked_key(key),
        version=version,
    )
    if template is None:
        raise _not_found(key, request.user.mode, version)
    return template


class TemplateController(Controller):
    path = "/templates"
    tags = ["Templates"]

    @put(
        "/{key:str}",
        status_code=201,
        guards=[requires_scope("manage")],
        summary="Save the next version of a template (version 1 when the key is new)",
    )
    async def save_template(
        self,
        request: ApiRequest,
        db_session: DbSession,
        key: FromPath[str],
        data: JSONBody[TemplateWrite],
    ) -> TemplateOut:
        principal = request.user
        renderer: Renderer = request.app.state.renderer

        async def compiles(sources: dict[str, dict[str, Any]]) -> list[FieldError]:
            return await renderer.check(
                tenant_id=principal.tenant_id,
                mode=principal.mode,
                plan=principal.plan,
                sources=sources,
            )

        try:
            saved = await service.save_template(
                db_session,
                tenant_id=principal.tenant_id,
                mode=principal.mode,
                key=key,
                content=_builtins(data.content),
                locales={tag: _builtins(value) for tag, value in data.locales.items()},
                name=data.name,
                category=data.category,
                default_locale=data.default_locale,
                actor=principal.actor,
                compiles=compiles,
            )
        except InvalidTemplate as error:
            raise _invalid(error) from None
        except OverBudget as over:
            raise _over_budget(over) from None
        await db_session.commit()
        return TemplateOut.of(saved)

    @get("/", guards=[requires_scope("read")], summary="List templates (latest versions)")
    async def list_templates(
        self,
        request: ApiRequest,
        db_session: DbSession,
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT)] = 20,
        cursor: FromQuery[uuid.UUID | None] = None,
    ) -> TemplateList:
        page = await service.list_templates(
            db_session,
            tenant_id=request.user.tenant_id,
            mode=request.user.mode,
            limit=limit,
            cursor=cursor,
        )
        return TemplateList(
            object="list",
            data=[TemplateSummary.of(t) for t in page.items],
            has_more=page.has_more,
            next_cursor=page.next_cursor,
        )

    @get("/{key:str}", guards=[requires_scope("read")], summary="Read a template version")
    async def get_template(
        self,
        request: ApiRequest,
        db_session: DbSession,
        key: FromPath[str],
        version: Version = None,
    ) -> TemplateOut:
        return TemplateOut.of(await _template(db_session, request, key, version))

    @get(
        "/{key:str}/versions",
        guards=[requires_scope("read")],
        summary="List a template's versions, newest first",
    )
    async def list_versions(
        self,
        request: ApiRequest,
        db_session: DbSession,
        key: FromPath[str],
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT)] = 20,
        cursor: Version = None,
    ) -> TemplateList:
        page = await service.list_versions(
            db_session,
            tenant_id=request.user.tenant_id,
            mode=request.user.mode,
            key=_checked_key(key),
            limit=limit,
            before=cursor,
        )
        if not page.items and cursor is None:
            raise _not_found(key, request.user.mode)
        return TemplateList(
            object="list",
            data=[TemplateSummary.of(t) for t in page.items],
            has_more=page.has_more,
            next_cursor=page.next_cursor,
        )

    @delete(
        "/{key:str}",
        status_code=200,
        guards=[requires_scope("manage")],
        summary="Delete a template: every version; sending with it is refused afterwards",
    )
    async def delete_template(
        self, request: ApiRequest, db_session: DbSession, key: FromPath[str]
    ) -> TemplateDeleted:
        deleted = await service.delete_template(
            db_session,
            tenant_id=request.user.tenant_id,
            mode=request.user.mode,
            key=_checked_key(key),
            actor=request.user.actor,
        )
        if not deleted:
            raise _not_found(key, request.user.mode)
        await db_session.commit()
        return TemplateDeleted(object="template", key=key, deleted=True, versions_deleted=deleted)

    @post(
        "/{key:str}/preview",
        status_code=200,
        guards=[requires_scope("read")],
        summary="Render every channel of a template with sample data",
    )
    async def preview_template(
        self,
        request: ApiRequest,
        db_session: DbSession,
        key: FromPath[str],
        data: JSONBody[PreviewRequest],
    ) -> TemplatePreview:
        if data.locale is not None and not is_locale(data.locale):
            raise field_error("locale", "a locale tag such as en or fr-CA")
        template = await _template(db_session, request, key, data.version)
        # As at a send: the tenant's default locale comes before the template's own content.
        tenant = await get_delivery_settings(db_session, tenant_id=request.user.tenant_id)
        # The session is not needed while rendering: give its connection back meanwhile.
        await db_session.rollback()
        renderer: Renderer = request.app.state.renderer
        jobs = [
            RenderJob(channel, data.locale, (tenant.default_locale,), data.recipient)
            for channel in template.channels
        ]
        try:
            outcomes = await renderer.preview(
                tenant_id=request.user.tenant_id,
                mode=request.user.mode,
                plan=request.user.plan,
                template=template,
                data=data.data,
                jobs=jobs,
            )
        except OverBudget as over:
            raise _over_budget(over) from None
        channels = {
            job.channel: _preview(template, job, outcome, tenant.default_locale)
            for job, outcome in zip(jobs, outcomes, strict=True)
        }
        return TemplatePreview(
            object="template_preview",
            key=template.key,
            version=template.version,
            locale=data.locale,
            channels=channels,
        )


def _builtins(value: Any) -> dict[str, Any]:
    result: dict[str, Any] = msgspec.to_builtins(value)
    return result


def _over_budget(over: OverBudget) -> Problem:
    seconds = max(1, math.ceil(over.retry_after))
    return Problem(
        429,
        "rate_limited",
        f"Render budget exhausted: this tenant's templates may render for "
        f"{over.bucket.rate:g} ms per second (bursts of {over.bucket.burst} ms), and a preview "
        f"sets aside each channel's worst case until it ends; retry in {seconds} s.",
        headers={"Retry-After": str(seconds)},
        retry_after=seconds,
    )


def _preview(
    template: TemplateVersion,
    job: RenderJob,
    outcome: Content | RenderFailed,
    default_locale: str | None,
) -> ChannelPreview:
    found = template.content_for(job.channel, job.locale, default_locale)
    locale = found.locale if found is not None else template.default_locale
    if isinstance(outcome, RenderFailed):
        return ChannelPreview(
            locale=locale, ok=False, error=PreviewError(field=outcome.field, message=str(outcome))
        )
    sms = None
    if isinstance(outcome, SmsContent):
        stats = count_segments(outcome.text)
        sms = SmsStats(length=stats.length, encoding=stats.encoding, segments=stats.segments)
    return ChannelPreview(locale=locale, ok=True, content=outcome, sms=sms)
