"""Making a tenant's webhook endpoint for a test, at a local URL."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from app import crypto
from app.settings import Settings
from app.webhooks import service
from tests.support import TenantKey


async def endpoint_at(
    session: AsyncSession,
    settings: Settings,
    owner: TenantKey,
    url: str,
    event_types: list[str] | None = None,
) -> tuple[uuid.UUID, str]:
    """An endpoint of the owner's mode at `url` (private URLs allowed for the test): its id
    and signing secret."""
    made, secret = await service.create_endpoint(
        session,
        tenant_id=owner.tenant_id,
        mode=owner.mode,
        data=service.EndpointInput(url, event_types=event_types),
        actor="test",
        keyring=crypto.keyring_for(settings),
        allow_private=True,
    )
    await session.commit()
    return made.id, secret
