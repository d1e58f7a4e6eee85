"""Dashboard tests' members: a browser signed in as a new member of a role, in a tenant made
with a key (tests/support.py make_tenant), looking at the data of that key's mode; and form
posts with or without htmx."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from argon2 import PasswordHasher
from litestar import Litestar
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.models import Membership, User
from tests.dashboard import PASSWORD, browser, csrf_token, htmx_headers, sign_in, unique_email
from tests.support import TenantKey


async def add_member(session: AsyncSession, tenant_id: uuid.UUID, role: str) -> str:
    """A member of `role` in the tenant; their e-mail (password PASSWORD)."""
    email = unique_email(role)
    user = User(
        email=email, name=f"{role.title()} Example", password_hash=PasswordHasher().hash(PASSWORD)
    )
    session.add(user)
    await session.flush()
    session.add(Membership(user_id=user.id, tenant_id=tenant_id, role=role))
    await session.commit()
    return email


@asynccontextmanager
async def signed_in(
    app: Litestar, session: AsyncSession, tenant: TenantKey, role: str = "owner"
) -> AsyncIterator[httpx.AsyncClient]:
    """A browser signed in as a new member of `role`, looking at the data of the key's mode."""
    email = await add_member(session, tenant.tenant_id, role)
    async with browser(app) as client:
        assert (await sign_in(client, email, PASSWORD)).status_code == 303
        await post(client, "/mode", {"mode": tenant.mode})
        yield client


async def post(
    client: httpx.AsyncClient, path: str, fields: dict[str, str], *, htmx: bool = False
) -> httpx.Response:
    token = await csrf_token(client, "/account")
    if htmx:
        return await client.post(path, data=fields, headers=htmx_headers(token))
    return await client.post(path, data={**fields, "_csrf_token": token})


def text_of(page: httpx.Response) -> str:
    return re.sub(r"\s+", " ", page.text)
