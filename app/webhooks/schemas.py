"""Request and response bodies of /v1/webhook-endpoints.

Limits are checked again by the service, which Python callers reach without msgspec's
decoding; the URL's destination is checked there only (it needs DNS).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

import msgspec

from app.recipients.validation import MAX_URL_LENGTH
from app.webhooks.events import EVENT_TYPES
from app.webhooks.models import WebhookDelivery, WebhookEndpoint
from app.webhooks.service import MAX_DESCRIPTION

EventType = Literal[EVENT_TYPES]  # type: ignore[valid-type]


class EndpointBody(msgspec.Struct, forbid_unknown_fields=True):
    """An endpoint: where events are POSTed, and which. `event_types` left out: all of them,
    those added later included."""

    openapi_examples: ClassVar[list[dict[str, Any]]] = [
        {"url": "https://hooks.example.com/herald"},
        {
            "url": "https://hooks.example.com/herald/bounces",
            "description": "Bounces and complaints to the CRM",
            "event_types": ["message.bounced", "message.complained"],
            "enabled": True,
        },
    ]

    url: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_URL_LENGTH)]
    description: Annotated[str, msgspec.Meta(max_length=MAX_DESCRIPTION)] = ""
    event_types: (
        Annotated[list[EventType], msgspec.Meta(min_length=1, max_length=len(EVENT_TYPES))] | None
    ) = None
    enabled: bool = True


class EndpointOut(msgspec.Struct):
    id: uuid.UUID
    object: Literal["webhook_endpoint"]
    url: str
    description: str
    event_types: list[str] | None
    enabled: bool
    created_at: datetime
    updated_at: datetime
    # After a rotation: until when the previous secret signs beside the new one.
    previous_secret_expires_at: datetime | None
    # Why Herald disabled it (410 Gone, or failing for 5 days); cleared when enabled again.
    disabled_reason: str | None = None
    # Since when every attempt has failed; None while it succeeds.
    failing_since: datetime | None = None

    @classmethod
    def of(cls, endpoint: WebhookEndpoint, now: datetime) -> EndpointOut:
        expires = endpoint.previous_expires_at
        return cls(
            id=endpoint.id,
            object="webhook_endpoint",
            url=endpoint.url,
            description=endpoint.description,
            event_types=endpoint.event_types,
            enabled=endpoint.enabled,
            created_at=endpoint.created_at,
            updated_at=endpoint.updated_at,
            previous_secret_expires_at=expires if expires is not None and expires > now else None,
            disabled_reason=endpoint.disabled_reason,
            failing_since=endpoint.failing_since,
        )


class EndpointWithSecret(EndpointOut):
    """An endpoint and its signing secret: in the answer of creation and rotation only."""

    secret: str = ""


class EndpointList(msgspec.Struct):
    object: Literal["list"]
    data: list[EndpointOut]


class EndpointDeleted(msgspec.Struct):
    id: uuid.UUID
    object: Literal["webhook_endpoint"]
    deleted: bool


class DeliveryOut(msgspec.Struct):
    """One event for one endpoint: its attempts so far and the last one's answer."""

    id: uuid.UUID
    object: Literal["webhook_delivery"]
    endpoint_id: uuid.UUID
    event_id: str
    event_type: str
    status: Literal["pending", "succeeded", "failed"]
    attempts: int
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_latency_ms: int | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    payload: dict[str, Any]  # the request's body, as sent on every attempt

    @classmethod
    def of(cls, delivery: WebhookDelivery) -> DeliveryOut:
        return cls(
            id=delivery.id,
            object="webhook_delivery",
            endpoint_id=delivery.endpoint_id,
            event_id=delivery.event_id,
            event_type=delivery.event_type,
            status=delivery.status,  # type: ignore[arg-type]
            attempts=delivery.attempts,
            next_attempt_at=delivery.next_attempt_at,
            last_status_code=delivery.last_status_code,
            last_latency_ms=delivery.last_latency_ms,
            last_error=delivery.last_error,
            created_at=delivery.created_at,
            updated_at=delivery.updated_at,
            payload=delivery.payload,
        )


class DeliveryList(msgspec.Struct):
    object: Literal["list"]
    data: list[DeliveryOut]
