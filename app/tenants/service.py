"""Creating and reading tenants."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit import service as audit
from app.tenants import plans
from app.tenants.models import Tenant


async def create_tenant(session: AsyncSession, *, name: str, actor: str) -> Tenant:
    # A new tenant gets the operator's default plan (HERALD_BILLING_DEFAULT_PLAN).
    tenant = Tenant(name=name, plan=plans.catalogue().default_plan)
    session.add(tenant)
    await session.flush()
    await audit.append(
        session, tenant_id=tenant.id, actor=actor, action="tenant.created", target=str(tenant.id)
    )
    return tenant


async def get_tenant(session: AsyncSession, *, tenant_id: uuid.UUID) -> Tenant | None:
    return await session.scalar(select(Tenant).where(Tenant.id == tenant_id))
