"""Members of a tenant for the dashboard tests of recipients, providers and settings: a user
with a given role, and a browser signed in as them viewing live or test data."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from argon2 import PasswordHasher
from litestar import Litestar
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.models import Membership, User
from tests.dashboard import PASSWORD, browser, post_form, sign_in, unique_email


async def add_member(session: AsyncSession, tenant_id: uuid.UUID, role: str) -> str:
    """A user with `role` in the tenant; returns their e-mail (password PASSWORD)."""
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
    app: Litestar, session: AsyncSession, tenant_id: uuid.UUID, role: str, mode: str = "live"
) -> AsyncIterator[httpx.AsyncClient]:
    """A browser signed in as a new member of the tenant with `role`, viewing `mode` data."""
    email = await add_member(session, tenant_id, role)
    async with browser(app) as client:
        assert (await sign_in(client, email, PASSWORD)).status_code == 303
        assert (await post_form(client, "/mode", {"mode": mode})).status_code == 303
        yield client
