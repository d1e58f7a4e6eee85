"""/v1/webhook-endpoints: where a tenant receives Herald's events, and their signing secrets.

Reading needs `read`; everything else `manage`. Endpoints are per mode, like everything the
calling key reaches (app/modes.py): a test key's endpoints receive test-mode events only.
A secret is in the answer of the call that made it (creation, rotation) and nowhere else.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, delete, get, post, put
from litestar.params import FromPath, JSONBody, QueryParameter
from sqlalchemy.ext.asyncio import AsyncSession

from app import crypto
from app.apidoc import problem_responses
from app.auth.keys import Principal
from app.auth.middleware import requires_scope
from app.db import utcnow
from app.dependencies import DbSession
from app.pagination import MAX_LIMIT
from app.problems import Problem, field_error
from app.webhooks import delivery, service
from app.webhooks.models import WebhookEndpoint
from app.webhooks.schemas import (
    DeliveryList,
    DeliveryOut,
    EndpointBody,
    EndpointDeleted,
    EndpointList,
    EndpointOut,
    EndpointWithSecret,
)

ApiRequest = Request[Principal, None, Any]
READ = [requires_scope("read")]
MANAGE = [requires_scope("manage")]


def _not_found(endpoint_id: uuid.UUID) -> Problem:
    return Problem(404, "not_found", f"No webhook endpoint {endpoint_id} in this tenant and mode.")


async def _endpoint(
    request: ApiRequest, db_session: AsyncSession, endpoint_id: uuid.UUID
) -> WebhookEndpoint:
    """The key's tenant's endpoint of the key's mode, or 404."""
    endpoint = await service.get_endpoint(
        db_session,
        tenant_id=request.user.tenant_id,
        mode=request.user.mode,
        endpoint_id=endpoint_id,
    )
    if endpoint is None:
        raise _not_found(endpoint_id)
    return endpoint


def _input(data: EndpointBody) -> service.EndpointInput:
    return service.EndpointInput(
        url=data.url,
        description=data.description,
        event_types=None if data.event_types is None else list(data.event_types),
        enabled=data.enabled,
    )


def _with_secret(endpoint: WebhookEndpoint, secret: str) -> EndpointWithSecret:
    shown = msgspec.structs.asdict(EndpointOut.of(endpoint, utcnow()))
    return EndpointWithSecret(**shown, secret=secret)


def _allow_private(request: ApiRequest) -> bool:
    return bool(request.app.state.settings.allow_private_urls)


class WebhookEndpointController(Controller):
    path = "/webhook-endpoints"
    tags = ["Webhook endpoints"]

    @post(
        "/",
        guards=MANAGE,
        summary="Add an endpoint; its signing secret is in this answer only",
        responses=problem_responses(
            {409: f"The tenant already has {service.MAX_ENDPOINTS} endpoints in this mode."}
        ),
    )
    async def create_endpoint(
        self, request: ApiRequest, db_session: DbSession, data: JSONBody[EndpointBody]
    ) -> EndpointWithSecret:
        try:
            endpoint, secret = await service.create_endpoint(
                db_session,
                tenant_id=request.user.tenant_id,
                mode=request.user.mode,
                data=_input(data),
                actor=request.user.actor,
                keyring=crypto.keyring_for(request.app.state.settings),
                allow_private=_allow_private(request),
            )
        except service.EndpointInvalid as error:
            raise field_error(error.field, error.message) from None
        except service.TooManyEndpoints:
            raise Problem(
                409,
                "too_many_endpoints",
                f"At most {service.MAX_ENDPOINTS} webhook endpoints per tenant and mode.",
            ) from None
        await db_session.commit()
        return _with_secret(endpoint, secret)

    @get("/", guards=READ, summary="List the endpoints of the key's mode")
    async def list_endpoints(self, request: ApiRequest, db_session: DbSession) -> EndpointList:
        found = await service.list_endpoints(
            db_session, tenant_id=request.user.tenant_id, mode=request.user.mode
        )
        now = utcnow()
        return EndpointList(object="list", data=[EndpointOut.of(e, now) for e in found])

    @get("/{endpoint_id:uuid}", guards=READ, summary="Read an endpoint (never its secret)")
    async def get_endpoint(
        self, request: ApiRequest, db_session: DbSession, endpoint_id: FromPath[uuid.UUID]
    ) -> EndpointOut:
        endpoint = await _endpoint(request, db_session, endpoint_id)
        return EndpointOut.of(endpoint, utcnow())

    @put(
        "/{endpoint_id:uuid}",
        guards=MANAGE,
        summary="Replace an endpoint's URL, description, event types and state; its secret stays",
    )
    async def replace_endpoint(
        self,
        request: ApiRequest,
        db_session: DbSession,
        endpoint_id: FromPath[uuid.UUID],
        data: JSONBody[EndpointBody],
    ) -> EndpointOut:
        try:
            endpoint = await service.replace_endpoint(
                db_session,
                tenant_id=request.user.tenant_id,
                mode=request.user.mode,
                endpoint_id=endpoint_id,
                data=_input(data),
                actor=request.user.actor,
                allow_private=_allow_private(request),
            )
        except service.EndpointInvalid as error:
            raise field_error(error.field, error.message) from None
        if endpoint is None:
            raise _not_found(endpoint_id)
        await db_session.commit()
        return EndpointOut.of(endpoint, utcnow())

    @delete("/{endpoint_id:uuid}", guards=MANAGE, status_code=200, summary="Delete an endpoint")
    async def delete_endpoint(
        self, request: ApiRequest, db_session: DbSession, endpoint_id: FromPath[uuid.UUID]
    ) -> EndpointDeleted:
        deleted = await service.delete_endpoint(
            db_session,
            tenant_id=request.user.tenant_id,
            mode=request.user.mode,
            endpoint_id=endpoint_id,
            actor=request.user.actor,
        )
        if not deleted:
            raise _not_found(endpoint_id)
        await db_session.commit()
        return EndpointDeleted(id=endpoint_id, object="webhook_endpoint", deleted=True)

    @post(
        "/{endpoint_id:uuid}/rotate-secret",
        guards=MANAGE,
        status_code=200,
        summary="A new signing secret (in this answer only); the old one signs too for 24 h",
    )
    async def rotate_secret(
        self, request: ApiRequest, db_session: DbSession, endpoint_id: FromPath[uuid.UUID]
    ) -> EndpointWithSecret:
        rotated = await service.rotate_secret(
            db_session,
            tenant_id=request.user.tenant_id,
            mode=request.user.mode,
            endpoint_id=endpoint_id,
            actor=request.user.actor,
            keyring=crypto.keyring_for(request.app.state.settings),
        )
        if rotated is None:
            raise _not_found(endpoint_id)
        await db_session.commit()
        return _with_secret(*rotated)

    @post(
        "/{endpoint_id:uuid}/test",
        guards=MANAGE,
        status_code=202,
        summary="Send the endpoint a signed `webhook.test` event; its delivery is in the log",
    )
    async def send_test(
        self, request: ApiRequest, db_session: DbSession, endpoint_id: FromPath[uuid.UUID]
    ) -> DeliveryOut:
        endpoint = await _endpoint(request, db_session, endpoint_id)
        sent = await delivery.send_test(db_session, endpoint, utcnow(), actor=request.user.actor)
        await db_session.commit()
        return DeliveryOut.of(sent)

    @post(
        "/{endpoint_id:uuid}/deliveries/{delivery_id:uuid}/resend",
        guards=MANAGE,
        status_code=202,
        summary="Send a delivery's event again now, with the same `webhook-id`",
    )
    async def resend(
        self,
        request: ApiRequest,
        db_session: DbSession,
        endpoint_id: FromPath[uuid.UUID],
        delivery_id: FromPath[uuid.UUID],
    ) -> DeliveryOut:
        await _endpoint(request, db_session, endpoint_id)  # 404 unless it is the key's
        again = await delivery.resend(
            db_session,
            tenant_id=request.user.tenant_id,
            mode=request.user.mode,
            endpoint_id=endpoint_id,
            delivery_id=delivery_id,
            now=utcnow(),
            actor=request.user.actor,
        )
        if again is None:
            raise Problem(404, "not_found", f"No delivery {delivery_id} of this endpoint.")
        await db_session.commit()
        return DeliveryOut.of(again)

    @get(
        "/{endpoint_id:uuid}/deliveries",
        guards=READ,
        summary="The endpoint's delivery log, newest first",
    )
    async def list_deliveries(
        self,
        request: ApiRequest,
        db_session: DbSession,
        endpoint_id: FromPath[uuid.UUID],
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT)] = 50,
    ) -> DeliveryList:
        await _endpoint(request, db_session, endpoint_id)  # 404 unless it is the key's
        found = await delivery.deliveries_of(
            db_session,
            tenant_id=request.user.tenant_id,
            mode=request.user.mode,
            endpoint_id=endpoint_id,
            limit=limit,
        )
        return DeliveryList(object="list", data=[DeliveryOut.of(d) for d in found])
