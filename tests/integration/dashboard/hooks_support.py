"""What the webhooks, receipts and audit page tests share: a signed-up owner's tenant, other
members of it, and switching the data mode as the top bar's button does."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import httpx
from argon2 import PasswordHasher
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth import accounts
from app.auth.models import Membership, User
from tests.dashboard import PASSWORD, post_form, sign_up, unique_email


@dataclass(frozen=True)
class Owner:
    email: str
    tenant_id: uuid.UUID


async def signed_up(client: httpx.AsyncClient, session: AsyncSession, company: str) -> Owner:
    """Sign up through the form; the owner's e-mail and tenant (pages show test data first)."""
    email = unique_email()
    assert (await sign_up(client, email, company=company)).status_code == 303
    user = await session.scalar(select(User).where(User.email == email))
    assert user is not None
    (access,) = await accounts.tenants_of(session, user_id=user.id)
    return Owner(email, access.tenant.id)


async def add_member(session: AsyncSession, tenant_id: uuid.UUID, role: str) -> str:
    """A member of the tenant with `role`; their e-mail (password: PASSWORD)."""
    email = unique_email(role)
    user = User(
        email=email, name=f"{role.title()} Example", password_hash=PasswordHasher().hash(PASSWORD)
    )
    session.add(user)
    await session.flush()
    session.add(Membership(user_id=user.id, tenant_id=tenant_id, role=role))
    await session.commit()
    return email


async def switch_mode(client: httpx.AsyncClient, mode: str) -> None:
    response = await post_form(client, "/mode", {"mode": mode})
    assert response.status_code == 303
