"""/v1/tenant: who the calling key belongs to."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

import msgspec
from litestar import Request, get

from app.auth.keys import Principal
from app.dependencies import DbSession
from app.problems import Problem
from app.tenants.service import get_tenant


class CallingKey(msgspec.Struct):
    id: uuid.UUID
    prefix: str
    mode: str
    scopes: list[str]


class TenantOut(msgspec.Struct):
    id: uuid.UUID
    object: Literal["tenant"]
    name: str
    plan: str
    created_at: datetime
    api_key: CallingKey


@get("/tenant", tags=["Tenant"], summary="The tenant and key making this call")
async def who_am_i(request: Request[Principal, None, Any], db_session: DbSession) -> TenantOut:
    principal = request.user
    tenant = await get_tenant(db_session, tenant_id=principal.tenant_id)
    if tenant is None:  # deleted between authentication and now
        raise Problem(404, "not_found", "This key's tenant no longer exists.")
    return TenantOut(
        id=tenant.id,
        object="tenant",
        name=tenant.name,
        plan=tenant.plan,
        created_at=tenant.created_at,
        api_key=CallingKey(
            id=principal.key_id,
            prefix=principal.key_prefix,
            mode=principal.mode,
            scopes=sorted(principal.scopes),
        ),
    )
