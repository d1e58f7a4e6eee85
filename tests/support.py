"""Helpers shared by the tests: settings for the test services, tenants with keys."""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from app.auth import keys
from app.settings import Settings, load_settings
from app.tenants.service import create_tenant


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def settings_for(database_url: str, redis_url: str, **overrides: str) -> Settings:
    environ = {
        **os.environ,
        "HERALD_ENV": "test",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "HERALD_DATA_DIR": os.environ.get("HERALD_TEST_DATA_DIR", ".herald/test"),
        **overrides,
    }
    return load_settings(environ)


@dataclass(frozen=True)
class TenantKey:
    tenant_id: uuid.UUID
    key_id: uuid.UUID
    secret: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secret}"}


async def make_tenant(
    session: AsyncSession,
    name: str = "Acme",
    *,
    mode: str = "live",
    scopes: list[str] | None = None,
) -> TenantKey:
    tenant = await create_tenant(session, name=name, actor="test")
    issued = await keys.issue_key(
        session,
        tenant_id=tenant.id,
        name="test key",
        mode=mode,
        scopes=scopes or ["send", "read", "manage"],
        actor="test",
    )
    await session.commit()
    return TenantKey(tenant.id, issued.key.id, issued.secret)
