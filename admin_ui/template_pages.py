"""The templates pages: list the tenant's templates, edit one with a live preview, compare
its versions, and send it to yourself as a test.

The editor's preview is rendered as its author types (htmx, debounced): the form, not a
saved version, is checked and rendered by the template service in the render pool within
the tenant's render budget (app/templates/drafts.py), exactly as the API's preview is; no
tenant template is ever rendered in this process. Saving makes a new version (the service
checks the role, the content and that every source compiles); a version is never changed.
"Send a test to me" accepts a notification of the saved template to the member's own
e-mail through the intake every notification takes (app/notifications/self_test.py), in the
data mode the member is looking at: test mode goes to the sandbox.

Every page reads the templates of the member's tenant and mode only: a key of another
tenant or of the other mode is a 404.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from typing import Annotated, Any

import structlog
from litestar import Controller, MediaType, Request, Response, get, post
from litestar.di import Provide
from litestar.exceptions import NotFoundException
from litestar.params import FromPath, QueryParameter
from litestar.plugins.htmx import HTMXTemplate
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncSession

from admin_ui.pages import form_text, form_texts, is_htmx, page, see_other
from admin_ui.query_params import bad_input
from admin_ui.session import Member, SignedInMember, provide_member, refused, require
from admin_ui.template_forms import (
    CHANNEL_FIELDS,
    CHANNEL_LABELS,
    EDITOR_CHANNELS,
    MAX_LOCALE_LENGTH,
    EditorForm,
    FormInvalid,
    form_field_of,
    json_text,
    where_of,
)
from app.auth import roles
from app.db import MAX_INT4
from app.dependencies import DbSession, IntakeDependency
from app.notifications.intake import InvalidNotification
from app.notifications.self_test import send_test_to_member
from app.notifications.writer import IntakeUnavailable
from app.templates import diffs, service
from app.templates.content import EmailContent
from app.templates.drafts import DraftError, DraftPreview, keep_html, kept_html, preview_draft
from app.templates.models import TemplateVersion
from app.templates.renderer import OverBudget, Renderer
from app.templates.sources import is_locale
from app.templates.validation import FieldError, InvalidTemplate, is_key

log = structlog.get_logger(__name__)

PAGE_SIZE = 50
VERSIONS_PAGE_SIZE = 50
EXCERPT_LINES = 2  # lines shown either side of an error's line


# The frame showing a previewed e-mail's HTML: the e-mail's inline styles apply (the pages'
# own policy forbids them), images and fonts load, nothing runs (no script source, and the
# sandbox makes it an origin of its own), and only the dashboard may frame it.
FRAME_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src data: https:; "
        "font-src data: https:; frame-ancestors 'self'; sandbox"
    ),
    "X-Frame-Options": "SAMEORIGIN",
}


def _renderer(request: Request[Any, Any, Any]) -> Renderer:
    renderer: Renderer = request.app.state.renderer
    return renderer


def _checked_key(key: str) -> str:
    if not is_key(key):
        raise NotFoundException("There is no template with this key.")
    return key


async def _template(
    db_session: AsyncSession, member: Member, key: str, version: int | None = None
) -> TemplateVersion:
    template = await service.get_template(
        db_session,
        tenant_id=member.tenant.id,
        mode=member.mode,
        key=_checked_key(key),
        version=version,
    )
    if template is None:
        what = f"version {version} of template" if version is not None else "template"
        raise NotFoundException(f"No {what} {key!r} in {member.mode} data.")
    return template


def _base(member: Member) -> dict[str, Any]:
    return {
        "member": member,
        "channel_labels": CHANNEL_LABELS,
        "channel_fields": CHANNEL_FIELDS,
        "editor_channels": EDITOR_CHANNELS,
        "where_of": where_of,
    }


def _over_budget_message(over: OverBudget) -> str:
    seconds = max(1, math.ceil(over.retry_after))
    return (
        f"Your templates have used their render time for now; the preview resumes in {seconds} s."
    )


@dataclass(frozen=True)
class ErrorView:
    """An error as the preview and the status boxes show it: the field it names (`target`:
    the editor's input holding that source, when there is one), its line, and the source
    around that line (line number, text, whether it is the line)."""

    field: str
    message: str
    target: str | None = None
    line: int | None = None
    excerpt: list[tuple[int, str, bool]] | None = None


def _excerpt(source: str, line: int) -> list[tuple[int, str, bool]]:
    lines = source.split("\n")
    first, last = max(1, line - EXCERPT_LINES), min(len(lines), line + EXCERPT_LINES)
    return [(n, lines[n - 1], n == line) for n in range(first, last + 1)]


def _error_view(form: EditorForm, error: DraftError) -> ErrorView:
    target = form_field_of(error.field)
    excerpt = None
    if target == error.field and error.line is not None:
        excerpt = _excerpt(form.values.get(target, ""), error.line)
    return ErrorView(error.field, error.message, target, error.line, excerpt)


def _form_errors(invalid: FormInvalid) -> list[ErrorView]:
    """The fields the editor's form could not read, each an input of its own."""
    return [ErrorView(name, message, target=name) for name, message in invalid.errors.items()]


class TemplatePagesController(Controller):
    path = "/templates"
    dependencies = {"member": Provide(provide_member)}

    @get("/")
    async def list_templates(
        self,
        db_session: DbSession,
        member: SignedInMember,
        cursor: Annotated[str | None, QueryParameter(name="cursor")] = None,
    ) -> Response[Any]:
        after = None
        if cursor:
            try:
                after = uuid.UUID(cursor[:36])
            except ValueError:
                raise bad_input("cursor", "not a page of this list") from None
        listed = await service.list_templates(
            db_session, tenant_id=member.tenant.id, mode=member.mode, limit=PAGE_SIZE, cursor=after
        )
        return page(
            "templates/list.html",
            templates=listed.items,
            next_cursor=listed.next_cursor,
            new={"key": "", "name": "", "channels": ["email"]},
            errors={},
            **_base(member),
        )

    @post("/")
    async def create_template(
        self, request: Request[Any, Any, Any], db_session: DbSession, member: SignedInMember
    ) -> Response[Any]:
        require(member, "manage_templates")
        form = await request.form()
        key = form_text(form, "key").strip()
        name = form_text(form, "name").strip()
        channels = [c for c in EDITOR_CHANNELS if c in form_texts(form, "channels")]
        errors: dict[str, str] = {}
        if not is_key(key):
            errors["key"] = (
                "Lower-case letters, digits, '.', '_' and '-', starting with a letter or "
                "digit; at most 100 characters (e.g. order.shipped)."
            )
        if len(name) > 200:
            errors["name"] = "At most 200 characters."
        if not channels:
            errors["channels"] = "Choose at least one channel."
        if not errors and await service.get_template(
            db_session, tenant_id=member.tenant.id, mode=member.mode, key=key
        ):
            errors["key"] = f"There is already a template {key!r} in {member.mode} data."
        saved = None
        if not errors:
            starter = EditorForm.starter(name or key, channels)
            draft = starter.draft()
            try:
                saved = await self._save(request, db_session, member, key, starter, draft.content)
            except InvalidTemplate as invalid:
                errors = {e["field"].split(".")[0]: e["message"] for e in invalid.errors}
        if saved is None:
            new = {"key": key, "name": name, "channels": channels}
            context = {"new": new, "errors": errors, **_base(member)}
            if is_htmx(request):
                return HTMXTemplate(
                    template_name="templates/new_form.html", context=context, status_code=422
                )
            listed = await service.list_templates(
                db_session,
                tenant_id=member.tenant.id,
                mode=member.mode,
                limit=PAGE_SIZE,
                cursor=None,
            )
            return page(
                "templates/list.html",
                status_code=422,
                templates=listed.items,
                next_cursor=listed.next_cursor,
                **context,
            )
        await db_session.commit()
        return see_other(request, f"/templates/{saved.key}")

    async def _save(
        self,
        request: Request[Any, Any, Any],
        db_session: AsyncSession,
        member: Member,
        key: str,
        form: EditorForm,
        content: dict[str, Any],
        locales: dict[str, Any] | None = None,
    ) -> TemplateVersion:
        renderer = _renderer(request)
        tenant_id, mode, plan = member.tenant.id, member.mode, member.tenant.plan

        async def compiles(sources: dict[str, dict[str, Any]]) -> list[FieldError]:
            return await renderer.check(tenant_id=tenant_id, mode=mode, plan=plan, sources=sources)

        try:
            return await service.save_template(
                db_session,
                tenant_id=tenant_id,
                mode=mode,
                key=key,
                content=content,
                locales=locales or {},
                name=form.name or None,
                category=form.category or None,
                default_locale=form.default_locale,
                actor=member.actor,
                compiles=compiles,
                role=member.role,
            )
        except roles.RoleNotAllowed as error:
            raise refused(member, error) from None
        except OverBudget as over:
            message = _over_budget_message(over)
            raise InvalidTemplate([{"field": "content", "message": message}]) from None

    @get("/{key:str}")
    async def editor(
        self,
        db_session: DbSession,
        member: SignedInMember,
        key: FromPath[str],
        version: Annotated[str | None, QueryParameter(name="version")] = None,
    ) -> Response[Any]:
        number = None if version is None else _version_number("version", version)
        template = await _template(db_session, member, key, number)
        latest = template if number is None else await _template(db_session, member, key)
        return self._editor_page(member, template, latest, EditorForm.of(template))

    def _editor_page(
        self,
        member: Member,
        template: TemplateVersion,
        latest: TemplateVersion,
        form: EditorForm,
        status_code: int = 200,
        save_errors: list[ErrorView] | None = None,
    ) -> Response[Any]:
        return page(
            "templates/editor.html",
            status_code=status_code,
            template=template,
            latest=latest,
            form=form,
            save_errors=save_errors,
            **_base(member),
        )

    @post("/{key:str}/editor")
    async def editor_form(
        self,
        request: Request[Any, Any, Any],
        db_session: DbSession,
        member: SignedInMember,
        key: FromPath[str],
    ) -> Response[Any]:
        """The editor's form again, with a locale added or removed (nothing is saved)."""
        template = await _template(db_session, member, key)
        raw = await request.form()
        try:
            form = EditorForm.read(raw)
        except FormInvalid as invalid:  # said where a save says it, the form left as it is
            return HTMXTemplate(
                template_name="templates/save_status.html",
                context={"errors": _form_errors(invalid)},
                status_code=422,
                re_target="#save-status",
                re_swap="innerHTML",
            )
        added = form_text(raw, "add_locale").strip()
        removed = form_text(raw, "remove_locale")
        status = 200
        error = None
        if added:
            if not is_locale(added) or len(added) > MAX_LOCALE_LENGTH:
                error, status = "A locale tag such as fr or fr-CA.", 422
            elif added.lower() in {t.lower() for t in [form.default_locale, *form.locales]}:
                error, status = f"The template already has {added}.", 422
            else:
                form.locales.append(added)
                form.preview_locale = added
        if removed in form.locales:
            form.locales.remove(removed)
            form.preview_locale = ""
        return HTMXTemplate(
            template_name="templates/editor_form.html",
            context={
                "template": template,
                "form": form,
                "locale_error": error,
                **_base(member),
            },
            status_code=status,
        )

    @post("/{key:str}/preview")
    async def preview(
        self,
        request: Request[Any, Any, Any],
        db_session: DbSession,
        member: SignedInMember,
        key: FromPath[str],
    ) -> Response[Any]:
        """The preview pane: the form's selected channel and locale rendered in the pool."""
        template = await _template(db_session, member, key)
        tenant_id, mode = member.tenant.id, member.mode
        plan, tenant_locale = member.tenant.plan, member.tenant.default_locale
        try:
            form = EditorForm.read(await request.form())
            draft = form.draft()
            data = form.sample_data()
            recipient = form.sample_recipient()
        except FormInvalid as invalid:
            return self._preview(None, _form_errors(invalid), None)
        # Nothing more is read: give the connection back while the pool renders (which
        # expires the member's rows: only the values read above are used from here on).
        await db_session.rollback()
        try:
            result = await preview_draft(
                _renderer(request),
                tenant_id=tenant_id,
                mode=mode,
                plan=plan,
                key=template.key,
                draft=draft,
                channel=form.preview_channel,
                locale=form.preview_locale or None,
                tenant_locale=tenant_locale,
                data=data,
                recipient=recipient,
            )
        except OverBudget as over:
            return self._preview(None, [_plain_error(_over_budget_message(over))], form)
        frame = None
        if isinstance(result.content, EmailContent) and result.content.html is not None:
            try:
                token = await keep_html(
                    request.app.state.redis,
                    tenant_id=tenant_id,
                    mode=mode,
                    html=result.content.html,
                )
                frame = f"/templates/{template.key}/frame/{token}"
            except (RedisError, OSError):
                log.warning("e-mail preview not kept: Redis did not answer")
        errors = [_error_view(form, e) for e in result.errors]
        return self._preview(result, errors, form, frame)

    def _preview(
        self,
        result: DraftPreview | None,
        errors: list[ErrorView],
        form: EditorForm | None,
        frame: str | None = None,
    ) -> Response[Any]:
        return HTMXTemplate(
            template_name="templates/preview.html",
            context={
                "result": result,
                "errors": errors,
                "form": form,
                "frame": frame,
                "channel_labels": CHANNEL_LABELS,
                "json_text": json_text,
            },
        )

    @get("/{key:str}/frame/{token:str}")
    async def frame(
        self,
        request: Request[Any, Any, Any],
        member: SignedInMember,
        key: FromPath[str],
        token: FromPath[str],
    ) -> Response[Any]:
        """A previewed e-mail's HTML, for the preview's frame: its own styles apply, nothing
        in it runs, loads anything but images and fonts, or leaves the frame."""
        html = await kept_html(
            request.app.state.redis, tenant_id=member.tenant.id, mode=member.mode, token=token
        )
        if html is None:
            raise NotFoundException(
                "This preview has expired: edit the template to render it again."
            )
        return Response(html, media_type=MediaType.HTML, headers=FRAME_HEADERS)

    def _status(
        self, name: str, errors: list[ErrorView], status: int, **extra: Any
    ) -> Response[Any]:
        return HTMXTemplate(
            template_name=name, context={"errors": errors, **extra}, status_code=status
        )

    @post("/{key:str}")
    async def save(
        self,
        request: Request[Any, Any, Any],
        db_session: DbSession,
        member: SignedInMember,
        key: FromPath[str],
    ) -> Response[Any]:
        require(member, "manage_templates")
        latest = await _template(db_session, member, key)
        form: EditorForm | None = None
        errors: list[ErrorView] = []
        saved = None
        try:
            form = EditorForm.read(await request.form())
            draft = form.draft()
        except FormInvalid as invalid:
            errors = _form_errors(invalid)
        else:
            try:
                saved = await self._save(
                    request, db_session, member, latest.key, form, draft.content, draft.locales
                )
            except InvalidTemplate as invalid:  # refused before anything was written
                errors = [_error_view(form, _line_error(e)) for e in invalid.errors]
        if saved is None:
            if is_htmx(request) or form is None:
                return self._status("templates/save_status.html", errors, 422)
            latest = await _template(db_session, member, key)
            return self._editor_page(member, latest, latest, form, 422, errors)
        await db_session.commit()
        if is_htmx(request):
            return self._status("templates/save_status.html", [], 200, saved=saved)
        return see_other(request, f"/templates/{saved.key}")

    @post("/{key:str}/test")
    async def send_test(
        self,
        request: Request[Any, Any, Any],
        db_session: DbSession,
        member: SignedInMember,
        intake_writer: IntakeDependency,
        key: FromPath[str],
    ) -> Response[Any]:
        require(member, "send_test")
        template = await _template(db_session, member, key)
        tenant_id, mode, plan = member.tenant.id, member.mode, member.tenant.plan
        user_id, email = member.user.id, member.user.email
        try:
            form = EditorForm.read(await request.form())
            data = form.sample_data()
        except FormInvalid as invalid:
            return self._status("templates/test_status.html", _form_errors(invalid), 422)
        try:
            accepted = await send_test_to_member(
                intake_writer,
                tenant_id=tenant_id,
                mode=mode,
                plan=plan,
                user_id=user_id,
                email=email,
                template_key=template.key,
                data=data,
                locale=form.preview_locale or None,
                role=member.role,
            )
        except roles.RoleNotAllowed as error:
            raise refused(member, error) from None
        except InvalidNotification as invalid:
            return self._status(
                "templates/test_status.html", [_plain_error(str(invalid), invalid.field)], 422
            )
        except IntakeUnavailable:
            message = "Herald could not store the test just now; nothing was sent. Try again."
            return self._status("templates/test_status.html", [_plain_error(message)], 503)
        return self._status(
            "templates/test_status.html",
            [],
            202,
            accepted=accepted,
            email=email,
            mode=mode,
            version=template.version,
        )

    @get("/{key:str}/versions")
    async def versions(
        self,
        db_session: DbSession,
        member: SignedInMember,
        key: FromPath[str],
        before: Annotated[str | None, QueryParameter(name="before")] = None,
    ) -> Response[Any]:
        older = None if before is None else _version_number("before", before)
        latest = await _template(db_session, member, key)
        listed = await service.list_versions(
            db_session,
            tenant_id=member.tenant.id,
            mode=member.mode,
            key=latest.key,
            limit=VERSIONS_PAGE_SIZE,
            before=older,
        )
        return page(
            "templates/versions.html",
            template=latest,
            versions=listed.items,
            next_cursor=listed.next_cursor,
            **_base(member),
        )

    @get("/{key:str}/diff")
    async def diff(
        self,
        db_session: DbSession,
        member: SignedInMember,
        key: FromPath[str],
        old_text: Annotated[str, QueryParameter(name="from")] = "",
        new_text: Annotated[str, QueryParameter(name="to")] = "",
        view: Annotated[str, QueryParameter(name="view")] = "split",
    ) -> Response[Any]:
        old = _version_number("from", old_text)
        new = _version_number("to", new_text)
        before = await _template(db_session, member, key, old)
        after = await _template(db_session, member, key, new)
        latest = await _template(db_session, member, key)
        old_lines, new_lines = diffs.version_lines(before), diffs.version_lines(after)
        view = "unified" if view == "unified" else "split"
        return page(
            "templates/diff.html",
            template=latest,
            before=before,
            after=after,
            view=view,
            rows=diffs.side_by_side(old_lines, new_lines) if view == "split" else [],
            lines=(
                diffs.unified(old_lines, new_lines, f"version {old}", f"version {new}")
                if view == "unified"
                else []
            ),
            same=old_lines == new_lines,
            **_base(member),
        )

    @post("/{key:str}/delete")
    async def delete(
        self,
        request: Request[Any, Any, Any],
        db_session: DbSession,
        member: SignedInMember,
        key: FromPath[str],
    ) -> Response[Any]:
        require(member, "manage_templates")
        try:
            deleted = await service.delete_template(
                db_session,
                tenant_id=member.tenant.id,
                mode=member.mode,
                key=_checked_key(key),
                actor=member.actor,
                role=member.role,
            )
        except roles.RoleNotAllowed as error:
            raise refused(member, error) from None
        if not deleted:
            raise NotFoundException(f"No template {key!r} in {member.mode} data.")
        await db_session.commit()
        return see_other(request, "/templates")


def _version_number(field: str, text: str) -> int:
    """A version number from the query string; 422 naming `field` otherwise."""
    if not (text.isascii() and text.isdigit() and 1 <= len(text) <= 10):
        raise bad_input(field, "a version number such as 3")
    number = int(text)
    if not 1 <= number <= MAX_INT4:
        raise bad_input(field, "a version number such as 3")
    return number


def _plain_error(message: str, field: str = "") -> ErrorView:
    """An error that points at no source line."""
    return ErrorView(field, message)


def _line_error(error: FieldError) -> DraftError:
    """A save's error, with the line a compile error names split out of its message."""
    message = error["message"]
    if message.startswith("line ") and ": " in message:
        number, _, rest = message[5:].partition(": ")
        if number.isdigit():
            return DraftError(error["field"], rest, int(number))
    return DraftError(error["field"], message)
