"""The API keys page: list the tenant's keys, create one (its secret shown once), revoke one.

Creating and revoking work with htmx (partials swapped into the page) and, without
JavaScript, as plain form posts answered with the whole page. Whether the member's role may
do either is the key service's to decide (app/auth/roles.py): it refuses, and this page
answers 403.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from typing import Any

from litestar import Controller, Request, Response, get, post
from litestar.datastructures import FormMultiDict
from litestar.di import Provide
from litestar.exceptions import NotFoundException
from litestar.params import FromPath
from litestar.plugins.htmx import HTMXTemplate
from sqlalchemy.ext.asyncio import AsyncSession

from admin_ui.pages import form_text, form_texts, is_htmx, page, see_other
from admin_ui.session import Member, SignedInMember, not_allowed, provide_member
from app.auth import keys, roles, verification
from app.auth.keys import IssuedKey
from app.auth.models import KEY_MODES, SCOPES
from app.auth.verification import LiveKeysNotAllowed
from app.dependencies import DbSession

NAME_MAX_LENGTH = 100  # the api_keys.name column
PAGE_SIZE = 100
SCOPE_HELP = {
    "send": "Send notifications",
    "read": "Read notifications, messages and recipients",
    "manage": "Manage API keys, templates and settings",
}
MODE_HELP = {
    "live": "Delivers through your providers",
    "test": "Delivers to the sandbox only",
}


@dataclass(frozen=True)
class KeyForm:
    """The create-a-key form as sent, with what is wrong with it by field (empty when valid)."""

    name: str = ""
    mode: str = "live"
    scopes: tuple[str, ...] = ("send",)
    errors: dict[str, str] = field(default_factory=dict)

    @classmethod
    def blank(cls, live_allowed: bool) -> KeyForm:
        return cls(mode="live" if live_allowed else "test")

    @classmethod
    def read(cls, form: FormMultiDict) -> KeyForm:
        name = form_text(form, "name").strip()
        mode = form_text(form, "mode")
        scopes = tuple(scope for scope in SCOPES if scope in form_texts(form, "scopes"))
        errors: dict[str, str] = {}
        if not name:
            errors["name"] = "Give the key a name, so you know later where it is used."
        elif len(name) > NAME_MAX_LENGTH:
            errors["name"] = f"At most {NAME_MAX_LENGTH} characters, please."
        if mode not in KEY_MODES:
            errors["mode"] = "Choose live or test."
        if not scopes:
            errors["scopes"] = "Choose at least one scope."
        return cls(name=name, mode=mode, scopes=scopes, errors=errors)


def _context(
    member: Member, form: KeyForm, live_allowed: bool, created: IssuedKey | None = None
) -> dict[str, Any]:
    return {
        "member": member,
        "form": form,
        "created": created,
        "scope_help": SCOPE_HELP,
        "mode_help": MODE_HELP,
        "live_allowed": live_allowed,
    }


async def _keys_page(
    db_session: AsyncSession,
    member: Member,
    form: KeyForm | None = None,
    created: IssuedKey | None = None,
    status_code: int = 200,
) -> Response[Any]:
    allowed = await verification.live_keys_allowed(db_session, tenant_id=member.tenant.id)
    listed = await keys.list_keys(db_session, tenant_id=member.tenant.id, limit=PAGE_SIZE)
    return page(
        "keys.html",
        status_code=status_code,
        keys=listed.items,
        has_more=listed.has_more,
        **_context(member, form or KeyForm.blank(allowed), allowed, created),
    )


def _create_section(
    member: Member, form: KeyForm, live_allowed: bool, created: IssuedKey | None = None
) -> Response[Any]:
    """The create-a-key section swapped in by htmx; with a new key, also its row (out of band)."""
    return HTMXTemplate(
        template_name="partials/key_create.html",
        context={**_context(member, form, live_allowed, created), "add_row": created is not None},
        status_code=201 if created else 422,
    )


class KeysController(Controller):
    path = "/keys"
    dependencies = {"member": Provide(provide_member)}

    @get("/")
    async def list_keys(self, db_session: DbSession, member: SignedInMember) -> Response[Any]:
        return await _keys_page(db_session, member)

    @post("/")
    async def create_key(
        self, request: Request[Any, Any, Any], db_session: DbSession, member: SignedInMember
    ) -> Response[Any]:
        # A role that may not create keys is refused before its form is read (the service
        # refuses it again), so that it gets a 403 whatever it sent.
        if not roles.may_manage_keys(member.role):
            raise not_allowed(member)
        form = KeyForm.read(await request.form())
        if not form.errors:
            try:
                await verification.check_key_mode(
                    db_session, tenant_id=member.tenant.id, mode=form.mode
                )
            except LiveKeysNotAllowed as refused:
                form = replace(form, errors={refused.field: str(refused)})
        issued = None
        if not form.errors:
            try:
                issued = await keys.issue_key(
                    db_session,
                    tenant_id=member.tenant.id,
                    name=form.name,
                    mode=form.mode,
                    scopes=list(form.scopes),
                    actor=member.actor,
                    role=member.role,
                )
            except roles.RoleNotAllowed:
                raise not_allowed(member) from None
            except keys.KeyLimitReached as full:
                await db_session.rollback()
                form = replace(form, errors={"name": str(full)})
        if issued is None:
            if is_htmx(request):
                allowed = await verification.live_keys_allowed(
                    db_session, tenant_id=member.tenant.id
                )
                return _create_section(member, form, allowed)
            return await _keys_page(db_session, member, form, status_code=422)
        await db_session.commit()
        if is_htmx(request):
            allowed = await verification.live_keys_allowed(db_session, tenant_id=member.tenant.id)
            return _create_section(member, KeyForm.blank(allowed), allowed, issued)
        return await _keys_page(db_session, member, None, issued, status_code=201)

    @post("/{key_id:uuid}/revoke")
    async def revoke_key(
        self,
        request: Request[Any, Any, Any],
        db_session: DbSession,
        member: SignedInMember,
        key_id: FromPath[uuid.UUID],
    ) -> Response[Any]:
        try:
            key = await keys.revoke_key(
                db_session,
                tenant_id=member.tenant.id,
                key_id=key_id,
                actor=member.actor,
                role=member.role,
            )
        except roles.RoleNotAllowed:
            raise not_allowed(member) from None
        if key is None:
            raise NotFoundException(f"No API key {key_id} in {member.tenant.name}.")
        await db_session.commit()
        if is_htmx(request):
            return HTMXTemplate(
                template_name="partials/key_row.html", context={"key": key, "member": member}
            )
        return see_other(request, "/keys")
