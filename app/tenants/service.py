"""Creating and reading tenants."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit import service as audit
from app.tenants.models import Tenant


async def create_tenant(session: AsyncSession, *, name: str, actor: str) -> Tenant:
    tenant = Tenant(name=name)
    session.add(tenant)
    await session.flush()
    await audit.append(
        session, tenant_id=tenant.id, actor=actor, action="tenant.created", target=str(tenant.id)
    )
    return tenant


async def get_tenant(session: AsyncSession, *, tenant_id: uuid.UUID) -> Tenant | None:
    return await session.scalar(select(Tenant).where(Tenant.id == tenant_id))
