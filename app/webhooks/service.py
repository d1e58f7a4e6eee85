"""Webhook endpoints: made, read, changed, deleted and given new secrets, per tenant and mode.

What this module guarantees:
- every function takes the tenant and the mode and filters on both (app/modes.py);
- a secret (`whsec_` and base64 of 32 random bytes, Standard Webhooks) is sealed at rest and
  returned only by the call that made it: creation and rotation;
- after a rotation the previous secret keeps signing beside the new one for ROTATION_OVERLAP,
  so receivers can switch without losing a delivery (`signed_headers`);
- an endpoint's URL is an absolute http(s) URL whose host does not resolve to a private,
  loopback or link-local address (unless the operator allows those); it is checked again,
  and the connection pinned to the address checked, at every delivery (app/providers/ssrf.py);
- a tenant has at most MAX_ENDPOINTS per mode; every change is audited, never the secret;
- a change asked for by a dashboard member (`role` given) is refused (roles.RoleNotAllowed)
  unless their role may `manage_webhooks`; API keys (no role) are bounded by their scopes.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit import service as audit
from app.auth import roles
from app.crypto import Keyring
from app.db import utcnow
from app.ids import uuid7
from app.providers import ssrf
from app.providers.standard_webhooks import generate_secret, signature_headers
from app.recipients.validation import RecipientInvalid, normalise_url
from app.webhooks.events import EVENT_TYPES
from app.webhooks.models import WebhookEndpoint

MAX_ENDPOINTS = 20  # per tenant and mode
MAX_DESCRIPTION = 500
ROTATION_OVERLAP = timedelta(hours=24)
MANAGE = "manage_webhooks"  # the action (app/auth/roles.py) every change here needs


class EndpointInvalid(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class TooManyEndpoints(Exception):
    """The tenant already has MAX_ENDPOINTS endpoints in this mode."""


@dataclass(frozen=True)
class EndpointInput:
    url: str
    description: str = ""
    event_types: list[str] | None = None
    enabled: bool = True


def _associated(endpoint: WebhookEndpoint, which: str) -> bytes:
    # Bound to its row and its slot: a sealed secret copied to another endpoint (or from the
    # previous slot to the current one) does not open.
    return f"webhook endpoint {endpoint.id} {which}".encode()


def _seal(endpoint: WebhookEndpoint, secret: str, keyring: Keyring) -> None:
    key_id, sealed = keyring.encrypt(
        secret.encode(), associated_data=_associated(endpoint, "current")
    )
    endpoint.secret_key_id, endpoint.secret_ciphertext = key_id, sealed


def secrets_of(endpoint: WebhookEndpoint, keyring: Keyring, now: datetime) -> list[str]:
    """The secrets that sign now: the current one, and the previous one during its overlap."""
    found = [
        keyring.decrypt(
            endpoint.secret_key_id,
            endpoint.secret_ciphertext,
            associated_data=_associated(endpoint, "current"),
        ).decode()
    ]
    if (
        endpoint.previous_ciphertext is not None
        and endpoint.previous_key_id is not None
        and endpoint.previous_expires_at is not None
        and now < endpoint.previous_expires_at
    ):
        found.append(
            keyring.decrypt(
                endpoint.previous_key_id,
                endpoint.previous_ciphertext,
                associated_data=_associated(endpoint, "previous"),
            ).decode()
        )
    return found


def signed_headers(
    endpoint: WebhookEndpoint, keyring: Keyring, *, message_id: str, body: bytes, timestamp: int
) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt: one `v1,…` signature per live secret."""
    now = utcnow()
    signatures = []
    headers: dict[str, str] = {}
    for secret in secrets_of(endpoint, keyring, now):
        headers = signature_headers(secret, message_id=message_id, body=body, timestamp=timestamp)
        signatures.append(headers["webhook-signature"])
    return {**headers, "webhook-signature": " ".join(signatures)}


async def _checked(data: EndpointInput, *, allow_private: bool) -> EndpointInput:
    try:
        url = normalise_url(data.url, "url")
    except RecipientInvalid as error:
        raise EndpointInvalid("url", error.message) from None
    parts = urlsplit(url)
    assert parts.hostname is not None  # normalise_url requires one
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        await ssrf.resolve(parts.hostname, port, allow_private=allow_private)
    except ssrf.UnsafeURL:
        raise EndpointInvalid("url", "the URL's host is not an address Herald will call") from None
    except ssrf.UnresolvableHost:
        pass  # perhaps not yet in DNS: every delivery resolves and checks it again
    if len(data.description) > MAX_DESCRIPTION:
        raise EndpointInvalid("description", f"at most {MAX_DESCRIPTION} characters")
    types = data.event_types
    if types is not None:
        unknown = sorted(set(types) - set(EVENT_TYPES))
        if unknown:
            raise EndpointInvalid("event_types", f"unknown event types: {', '.join(unknown)}")
        if not types:
            raise EndpointInvalid("event_types", "name at least one, or leave it out for all")
        types = [t for t in EVENT_TYPES if t in set(types)]  # once each, in a fixed order
    return EndpointInput(url, data.description, types, data.enabled)


def _audited(endpoint: WebhookEndpoint) -> dict[str, object]:
    return {
        "url": endpoint.url,
        "event_types": endpoint.event_types,
        "enabled": endpoint.enabled,
    }


async def create_endpoint(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    mode: str,
    data: EndpointInput,
    actor: str,
    keyring: Keyring,
    allow_private: bool,
    role: str | None = None,
) -> tuple[WebhookEndpoint, str]:
    """A new endpoint and its secret, which no later call returns."""
    roles.require(role, MANAGE)
    checked = await _checked(data, allow_private=allow_private)
    count = await session.scalar(
        select(func.count())
        .select_from(WebhookEndpoint)
        .where(WebhookEndpoint.tenant_id == tenant_id, WebhookEndpoint.mode == mode)
    )
    if (count or 0) >= MAX_ENDPOINTS:
        raise TooManyEndpoints
    now = utcnow()
    endpoint = WebhookEndpoint(
        # Its id is set here: the sealed secret is bound to it before the row is written.
        id=uuid7(),
        tenant_id=tenant_id,
        mode=mode,
        url=checked.url,
        description=checked.description,
        event_types=checked.event_types,
        enabled=checked.enabled,
        created_at=now,
        updated_at=now,
    )
    secret = generate_secret()
    _seal(endpoint, secret, keyring)
    session.add(endpoint)
    await session.flush()
    await audit.append(
        session,
        tenant_id=tenant_id,
        actor=actor,
        action="webhook_endpoint.created",
        target=str(endpoint.id),
        details={"mode": mode, **_audited(endpoint)},
    )
    return endpoint, secret


async def list_endpoints(
    session: AsyncSession, *, tenant_id: uuid.UUID, mode: str
) -> list[WebhookEndpoint]:
    found = await session.scalars(
        select(WebhookEndpoint)
        .where(WebhookEndpoint.tenant_id == tenant_id, WebhookEndpoint.mode == mode)
        .order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)
    )
    return list(found)


async def get_endpoint(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    mode: str,
    endpoint_id: uuid.UUID,
    for_update: bool = False,
) -> WebhookEndpoint | None:
    query = select(WebhookEndpoint).where(
        WebhookEndpoint.tenant_id == tenant_id,
        WebhookEndpoint.mode == mode,
        WebhookEndpoint.id == endpoint_id,
    )
    if for_update:
        query = query.with_for_update()
    endpoint: WebhookEndpoint | None = await session.scalar(query)
    return endpoint


async def replace_endpoint(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    mode: str,
    endpoint_id: uuid.UUID,
    data: EndpointInput,
    actor: str,
    allow_private: bool,
    role: str | None = None,
) -> WebhookEndpoint | None:
    """The endpoint with its URL, description, event types and state replaced; its secret kept."""
    roles.require(role, MANAGE)
    checked = await _checked(data, allow_private=allow_private)
    endpoint = await get_endpoint(
        session, tenant_id=tenant_id, mode=mode, endpoint_id=endpoint_id, for_update=True
    )
    if endpoint is None:
        return None
    endpoint.url = checked.url
    endpoint.description = checked.description
    endpoint.event_types = checked.event_types
    if checked.enabled and not endpoint.enabled:
        # Enabled again: what failed before is forgotten, and what waited goes out.
        endpoint.disabled_reason = None
        endpoint.failing_since = None
    endpoint.enabled = checked.enabled
    endpoint.updated_at = utcnow()
    await audit.append(
        session,
        tenant_id=tenant_id,
        actor=actor,
        action="webhook_endpoint.replaced",
        target=str(endpoint.id),
        details={"mode": mode, **_audited(endpoint)},
    )
    return endpoint


async def set_enabled(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    mode: str,
    endpoint_id: uuid.UUID,
    enabled: bool,
    actor: str,
    role: str | None = None,
) -> WebhookEndpoint | None:
    """Enable or disable the endpoint by hand, nothing else changed; None if not found.

    Enabling clears why Herald disabled it and since when it failed, so what waited for it
    goes out with the next round; disabling by hand leaves no reason (the member chose it)."""
    roles.require(role, MANAGE)
    endpoint = await get_endpoint(
        session, tenant_id=tenant_id, mode=mode, endpoint_id=endpoint_id, for_update=True
    )
    if endpoint is None:
        return None
    if endpoint.enabled == enabled:
        return endpoint
    if enabled:
        endpoint.disabled_reason = None
        endpoint.failing_since = None
    endpoint.enabled = enabled
    endpoint.updated_at = utcnow()
    await audit.append(
        session,
        tenant_id=tenant_id,
        actor=actor,
        action="webhook_endpoint.enabled" if enabled else "webhook_endpoint.disabled",
        target=str(endpoint.id),
        details={"mode": mode},
    )
    return endpoint


async def delete_endpoint(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    mode: str,
    endpoint_id: uuid.UUID,
    actor: str,
    role: str | None = None,
) -> bool:
    roles.require(role, MANAGE)
    deleted = await session.scalar(
        delete(WebhookEndpoint)
        .where(
            WebhookEndpoint.tenant_id == tenant_id,
            WebhookEndpoint.mode == mode,
            WebhookEndpoint.id == endpoint_id,
        )
        .returning(WebhookEndpoint.id)
    )
    if deleted is None:
        return False
    await audit.append(
        session,
        tenant_id=tenant_id,
        actor=actor,
        action="webhook_endpoint.deleted",
        target=str(endpoint_id),
        details={"mode": mode},
    )
    return True


async def rotate_secret(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    mode: str,
    endpoint_id: uuid.UUID,
    actor: str,
    keyring: Keyring,
    role: str | None = None,
) -> tuple[WebhookEndpoint, str] | None:
    """A new secret for the endpoint; the one it replaces signs too for ROTATION_OVERLAP.

    A second rotation within the overlap ends the oldest secret at once: two secrets sign at
    most, the newest two."""
    roles.require(role, MANAGE)
    endpoint = await get_endpoint(
        session, tenant_id=tenant_id, mode=mode, endpoint_id=endpoint_id, for_update=True
    )
    if endpoint is None:
        return None
    now = utcnow()
    current = secrets_of(endpoint, keyring, now)[0]
    key_id, sealed = keyring.encrypt(
        current.encode(), associated_data=_associated(endpoint, "previous")
    )
    endpoint.previous_key_id, endpoint.previous_ciphertext = key_id, sealed
    endpoint.previous_expires_at = now + ROTATION_OVERLAP
    secret = generate_secret()
    _seal(endpoint, secret, keyring)
    endpoint.updated_at = now
    await audit.append(
        session,
        tenant_id=tenant_id,
        actor=actor,
        action="webhook_endpoint.secret_rotated",
        target=str(endpoint.id),
        details={"mode": mode, "previous_expires_at": endpoint.previous_expires_at.isoformat()},
    )
    return endpoint, secret
