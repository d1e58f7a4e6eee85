"""The webhooks pages: the tenant's endpoints (where Herald POSTs its events) and each one's
delivery log.

/webhooks lists the endpoints of the mode the member is looking at, with why Herald disabled
one (410 Gone, failing for days) and since when one fails, and adds one (the URL goes
through the same SSRF guard as the API's; its signing secret is shown once).
/webhooks/{id} shows an endpoint, edits it, enables or disables it, rotates its secret (the
new one shown once), sends it a test event and lists its deliveries newest first, each with
a Resend button. Every change is the webhook services' (app/webhooks/service.py,
delivery.py), which refuse a role that may not `manage_webhooks`, and audit it.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from litestar import Controller, Request, Response, get, post
from litestar.datastructures import FormMultiDict
from litestar.di import Provide
from litestar.exceptions import NotFoundException
from litestar.params import FromPath
from litestar.plugins.htmx import HTMXTemplate
from sqlalchemy.ext.asyncio import AsyncSession

from admin_ui.pages import form_text, form_texts, is_htmx, page, see_other
from admin_ui.query_params import query_choice, query_uuid
from admin_ui.session import Member, SignedInMember, provide_member, refused, require
from app import crypto
from app.auth import roles
from app.db import utcnow
from app.dependencies import DbSession
from app.recipients.validation import MAX_URL_LENGTH
from app.webhooks import delivery, service
from app.webhooks.events import EVENT_TYPES
from app.webhooks.models import WebhookDelivery, WebhookEndpoint

ACTION = service.MANAGE
DELIVERY_PAGE = 50
DELIVERY_STATUSES = ("pending", "succeeded", "failed")
_HELP = {
    "message.sent": "A provider accepted a message",
    "message.delivered": "The provider reports it delivered",
    "message.bounced": "It bounced",
    "message.complained": "The recipient marked it as spam",
    "message.failed": "It failed for good",
    "message.opened": "The recipient opened it",
    "message.clicked": "The recipient clicked a link in it",
    "notification.completed": "Every message of a notification is done",
    "notification.refused": "A broadcast was refused whole: larger than the quota left",
    "recipient.unsubscribed": "A recipient unsubscribed",
    "recipient.suppressed": "An address is suppressed (hard bounce, complaint)",
}
# Every type the service knows, in its order; one added there shows here at once.
EVENT_HELP = {name: _HELP.get(name, "") for name in EVENT_TYPES}


@dataclass(frozen=True)
class EndpointForm:
    """The add/edit form as sent, with what is wrong with it by field (empty when valid)."""

    url: str = ""
    description: str = ""
    # Empty: every event type, those added later included.
    event_types: tuple[str, ...] = ()
    errors: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, endpoint: WebhookEndpoint) -> EndpointForm:
        return cls(endpoint.url, endpoint.description, tuple(endpoint.event_types or ()))

    @classmethod
    def read(cls, form: FormMultiDict) -> EndpointForm:
        url = form_text(form, "url").strip()
        description = form_text(form, "description").strip()
        chosen = form_texts(form, "event_types")
        errors: dict[str, str] = {}
        if not url:
            errors["url"] = "Give the URL Herald should POST events to."
        elif len(url) > MAX_URL_LENGTH:
            errors["url"] = f"At most {MAX_URL_LENGTH} characters, please."
        if len(description) > service.MAX_DESCRIPTION:
            errors["description"] = f"At most {service.MAX_DESCRIPTION} characters, please."
        elif "\x00" in description:
            errors["description"] = "description: must not contain the NUL character."
        unknown = [name for name in chosen if name not in EVENT_TYPES]
        if unknown or len(chosen) > len(EVENT_TYPES):
            errors["event_types"] = "Choose among the event types listed."
        types = tuple(name for name in EVENT_TYPES if name in chosen)
        return cls(url, description, types, errors)

    def input(self, enabled: bool) -> service.EndpointInput:
        return service.EndpointInput(
            url=self.url,
            description=self.description,
            event_types=list(self.event_types) or None,
            enabled=enabled,
        )


def pretty_json(value: Any) -> str:
    """A JSON value as indented text, for a <pre> (the template escapes it)."""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)


def _allow_private(request: Request[Any, Any, Any]) -> bool:
    return bool(request.app.state.settings.allow_private_urls)


def _keyring(request: Request[Any, Any, Any]) -> crypto.Keyring:
    return crypto.keyring_for(request.app.state.settings)


async def _endpoint(
    db_session: AsyncSession, member: Member, endpoint_id: uuid.UUID
) -> WebhookEndpoint:
    """The member's tenant's endpoint of the mode they look at, or 404."""
    endpoint = await service.get_endpoint(
        db_session, tenant_id=member.tenant.id, mode=member.mode, endpoint_id=endpoint_id
    )
    if endpoint is None:
        raise NotFoundException(f"No webhook endpoint {endpoint_id} in {member.tenant.name}.")
    return endpoint


async def _list_page(
    db_session: AsyncSession,
    member: Member,
    form: EndpointForm | None = None,
    status_code: int = 200,
) -> Response[Any]:
    endpoints = await service.list_endpoints(
        db_session, tenant_id=member.tenant.id, mode=member.mode
    )
    return page(
        "webhooks/list.html",
        status_code=status_code,
        member=member,
        endpoints=endpoints,
        form=form or EndpointForm(),
        event_help=EVENT_HELP,
        max_endpoints=service.MAX_ENDPOINTS,
        now=utcnow(),
    )


async def _endpoint_page(
    request: Request[Any, Any, Any],
    db_session: AsyncSession,
    member: Member,
    endpoint: WebhookEndpoint,
    *,
    form: EndpointForm | None = None,
    secret: str | None = None,
    notice: str | None = None,
    status_code: int = 200,
) -> Response[Any]:
    cursor = query_uuid(request, "cursor")
    status = query_choice(request, "status", DELIVERY_STATUSES)
    found = await delivery.delivery_page(
        db_session,
        tenant_id=member.tenant.id,
        mode=member.mode,
        endpoint_id=endpoint.id,
        limit=DELIVERY_PAGE,
        cursor=cursor,
        status=status,
    )
    return page(
        "webhooks/endpoint.html",
        status_code=status_code,
        member=member,
        endpoint=endpoint,
        deliveries=found.items,
        next_cursor=found.next_cursor,
        cursor=cursor,
        status=status,
        statuses=DELIVERY_STATUSES,
        form=form or EndpointForm.of(endpoint),
        event_help=EVENT_HELP,
        secret=secret,
        notice=notice,
        now=utcnow(),
        pretty=pretty_json,
    )


def _delivery_row(member: Member, sent: WebhookDelivery, endpoint_id: uuid.UUID) -> Response[Any]:
    return HTMXTemplate(
        template_name="webhooks/delivery_row.html",
        context={"member": member, "d": sent, "endpoint_id": endpoint_id, "pretty": pretty_json},
    )


class WebhooksController(Controller):
    path = "/webhooks"
    dependencies = {"member": Provide(provide_member)}

    @get("/")
    async def list_endpoints(self, db_session: DbSession, member: SignedInMember) -> Response[Any]:
        return await _list_page(db_session, member)

    @post("/")
    async def create_endpoint(
        self, request: Request[Any, Any, Any], db_session: DbSession, member: SignedInMember
    ) -> Response[Any]:
        require(member, ACTION)
        form = EndpointForm.read(await request.form())
        if form.errors:
            return await _list_page(db_session, member, form, status_code=422)
        try:
            endpoint, secret = await service.create_endpoint(
                db_session,
                tenant_id=member.tenant.id,
                mode=member.mode,
                data=form.input(enabled=True),
                actor=member.actor,
                keyring=_keyring(request),
                allow_private=_allow_private(request),
                role=member.role,
            )
        except roles.RoleNotAllowed as error:
            raise refused(member, error) from None
        except service.EndpointInvalid as error:
            # Refused before anything was written (the check comes first): nothing to undo.
            wrong = EndpointForm(form.url, form.description, form.event_types)
            wrong.errors[error.field] = _sentence(error.message)
            return await _list_page(db_session, member, wrong, status_code=422)
        except service.TooManyEndpoints:
            full = EndpointForm(form.url, form.description, form.event_types)
            full.errors["url"] = (
                f"You have {service.MAX_ENDPOINTS} endpoints in {member.mode} mode, the most "
                "there may be: delete one first."
            )
            return await _list_page(db_session, member, full, status_code=422)
        await db_session.commit()
        return await _endpoint_page(
            request, db_session, member, endpoint, secret=secret, status_code=201
        )

    @get("/{endpoint_id:uuid}")
    async def show_endpoint(
        self,
        request: Request[Any, Any, Any],
        db_session: DbSession,
        member: SignedInMember,
        endpoint_id: FromPath[uuid.UUID],
    ) -> Response[Any]:
        endpoint = await _endpoint(db_session, member, endpoint_id)
        notice = (
            "A test event is on its way: it is the newest delivery below."
            if (request.query_params.get("sent") == "test")
            else None
        )
        return await _endpoint_page(request, db_session, member, endpoint, notice=notice)

    @post("/{endpoint_id:uuid}")
    async def edit_endpoint(
        self,
        request: Request[Any, Any, Any],
        db_session: DbSession,
        member: SignedInMember,
        endpoint_id: FromPath[uuid.UUID],
    ) -> Response[Any]:
        require(member, ACTION)
        form = EndpointForm.read(await request.form())
        endpoint = await _endpoint(db_session, member, endpoint_id)
        if form.errors:
            return await _endpoint_page(
                request, db_session, member, endpoint, form=form, status_code=422
            )
        try:
            changed = await service.replace_endpoint(
                db_session,
                tenant_id=member.tenant.id,
                mode=member.mode,
                endpoint_id=endpoint_id,
                data=form.input(enabled=endpoint.enabled),
                actor=member.actor,
                allow_private=_allow_private(request),
                role=member.role,
            )
        except roles.RoleNotAllowed as error:
            raise refused(member, error) from None
        except service.EndpointInvalid as error:
            wrong = EndpointForm(form.url, form.description, form.event_types)
            wrong.errors[error.field] = _sentence(error.message)
            return await _endpoint_page(
                request, db_session, member, endpoint, form=wrong, status_code=422
            )
        if changed is None:
            raise NotFoundException(f"No webhook endpoint {endpoint_id} in {member.tenant.name}.")
        await db_session.commit()
        return see_other(request, f"/webhooks/{endpoint_id}")

    @post("/{endpoint_id:uuid}/enable")
    async def enable(
        self,
        request: Request[Any, Any, Any],
        db_session: DbSession,
        member: SignedInMember,
        endpoint_id: FromPath[uuid.UUID],
    ) -> Response[Any]:
        return await _set_enabled(request, db_session, member, endpoint_id, enabled=True)

    @post("/{endpoint_id:uuid}/disable")
    async def disable(
        self,
        request: Request[Any, Any, Any],
        db_session: DbSession,
        member: SignedInMember,
        endpoint_id: FromPath[uuid.UUID],
    ) -> Response[Any]:
        return await _set_enabled(request, db_session, member, endpoint_id, enabled=False)

    @post("/{endpoint_id:uuid}/rotate-secret")
    async def rotate_secret(
        self,
        request: Request[Any, Any, Any],
        db_session: DbSession,
        member: SignedInMember,
        endpoint_id: FromPath[uuid.UUID],
    ) -> Response[Any]:
        require(member, ACTION)
        try:
            rotated = await service.rotate_secret(
                db_session,
                tenant_id=member.tenant.id,
                mode=member.mode,
                endpoint_id=endpoint_id,
                actor=member.actor,
                keyring=_keyring(request),
                role=member.role,
            )
        except roles.RoleNotAllowed as error:
            raise refused(member, error) from None
        if rotated is None:
            raise NotFoundException(f"No webhook endpoint {endpoint_id} in {member.tenant.name}.")
        await db_session.commit()
        endpoint, secret = rotated
        return await _endpoint_page(request, db_session, member, endpoint, secret=secret)

    @post("/{endpoint_id:uuid}/test")
    async def send_test(
        self,
        request: Request[Any, Any, Any],
        db_session: DbSession,
        member: SignedInMember,
        endpoint_id: FromPath[uuid.UUID],
    ) -> Response[Any]:
        require(member, ACTION)
        endpoint = await _endpoint(db_session, member, endpoint_id)
        try:
            await delivery.send_test(
                db_session, endpoint, utcnow(), actor=member.actor, role=member.role
            )
        except roles.RoleNotAllowed as error:
            raise refused(member, error) from None
        await db_session.commit()
        return see_other(request, f"/webhooks/{endpoint_id}?sent=test")

    @post("/{endpoint_id:uuid}/delete")
    async def delete_endpoint(
        self,
        request: Request[Any, Any, Any],
        db_session: DbSession,
        member: SignedInMember,
        endpoint_id: FromPath[uuid.UUID],
    ) -> Response[Any]:
        require(member, ACTION)
        try:
            deleted = await service.delete_endpoint(
                db_session,
                tenant_id=member.tenant.id,
                mode=member.mode,
                endpoint_id=endpoint_id,
                actor=member.actor,
                role=member.role,
            )
        except roles.RoleNotAllowed as error:
            raise refused(member, error) from None
        if not deleted:
            raise NotFoundException(f"No webhook endpoint {endpoint_id} in {member.tenant.name}.")
        await db_session.commit()
        return see_other(request, "/webhooks")

    @post("/{endpoint_id:uuid}/deliveries/{delivery_id:uuid}/resend")
    async def resend(
        self,
        request: Request[Any, Any, Any],
        db_session: DbSession,
        member: SignedInMember,
        endpoint_id: FromPath[uuid.UUID],
        delivery_id: FromPath[uuid.UUID],
    ) -> Response[Any]:
        require(member, ACTION)
        await _endpoint(db_session, member, endpoint_id)
        try:
            again = await delivery.resend(
                db_session,
                tenant_id=member.tenant.id,
                mode=member.mode,
                endpoint_id=endpoint_id,
                delivery_id=delivery_id,
                now=utcnow(),
                actor=member.actor,
                role=member.role,
            )
        except roles.RoleNotAllowed as error:
            raise refused(member, error) from None
        if again is None:
            raise NotFoundException(f"No delivery {delivery_id} of this endpoint.")
        await db_session.commit()
        if is_htmx(request):
            return _delivery_row(member, again, endpoint_id)
        return see_other(request, f"/webhooks/{endpoint_id}")


async def _set_enabled(
    request: Request[Any, Any, Any],
    db_session: AsyncSession,
    member: Member,
    endpoint_id: uuid.UUID,
    *,
    enabled: bool,
) -> Response[Any]:
    require(member, ACTION)
    try:
        endpoint = await service.set_enabled(
            db_session,
            tenant_id=member.tenant.id,
            mode=member.mode,
            endpoint_id=endpoint_id,
            enabled=enabled,
            actor=member.actor,
            role=member.role,
        )
    except roles.RoleNotAllowed as error:
        raise refused(member, error) from None
    if endpoint is None:
        raise NotFoundException(f"No webhook endpoint {endpoint_id} in {member.tenant.name}.")
    await db_session.commit()
    return see_other(request, f"/webhooks/{endpoint_id}")


def _sentence(message: str) -> str:
    """A service's message ("the URL's host is not…") as the sentence a page shows."""
    text = message[:1].upper() + message[1:]
    return text if text.endswith(".") else f"{text}."
