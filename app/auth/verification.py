"""E-mail verification, and the rule that keeps live keys from tenants nobody has verified.

Sign-up makes a tenant and its owner at once, and test keys work straight away; but the
tenant is listed in `unverified_tenants` until one of its owners proves their address by
following a link mailed to it. While it is listed:

- a live key of the tenant does not authenticate (`app.auth.keys.authenticate` refuses it,
  whoever made it and however), so nothing is sent for real on its behalf;
- no live key can be made for it: the dashboard asks `check_key_mode` before issuing one,
  and over the API only a live key may create live keys, and none authenticates.

Tenants made by an operator (`herald tenant create`, the demo of `herald dev`) are never
listed. A link is a random token of which only the SHA-256 is stored; it expires after
`LINK_LIFETIME` and works once.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from datetime import timedelta
from urllib.parse import quote

from sqlalchemy import delete, exists, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth import roles
from app.auth.models import EmailVerification, Membership, UnverifiedTenant, User
from app.db import utcnow

LINK_LIFETIME = timedelta(hours=24)
MAX_TOKEN_LENGTH = 100  # tokens are 43 characters; anything much longer is not one
LIVE_KEYS_NEED_VERIFICATION = (
    "Live keys can be created once an owner of this tenant has verified their e-mail "
    "address; test keys work meanwhile."
)


class LiveKeysNotAllowed(ValueError):
    """A live key was asked for a tenant none of whose owners has verified an address."""

    def __init__(self) -> None:
        super().__init__(LIVE_KEYS_NEED_VERIFICATION)
        self.field = "mode"


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def hold_live_keys(session: AsyncSession, *, tenant_id: uuid.UUID) -> None:
    """List a tenant as unverified (in the caller's transaction)."""
    session.add(UnverifiedTenant(tenant_id=tenant_id))


async def live_keys_allowed(session: AsyncSession, *, tenant_id: uuid.UUID) -> bool:
    held = await session.scalar(select(exists().where(UnverifiedTenant.tenant_id == tenant_id)))
    return not held


async def check_key_mode(session: AsyncSession, *, tenant_id: uuid.UUID, mode: str) -> None:
    """Raise LiveKeysNotAllowed for a live key of an unverified tenant."""
    if mode == "live" and not await live_keys_allowed(session, tenant_id=tenant_id):
        raise LiveKeysNotAllowed


async def issue_link(session: AsyncSession, *, user: User, public_url: str) -> str:
    """A new verification link for the user's address (in the caller's transaction)."""
    token = secrets.token_urlsafe(32)
    session.add(
        EmailVerification(
            token_hash=_digest(token),
            user_id=user.id,
            email=user.email,
            expires_at=utcnow() + LINK_LIFETIME,
        )
    )
    return f"{public_url}/verify-email?token={quote(token)}"


def link_mail(name: str, link: str) -> tuple[str, str]:
    """Subject and text of the message carrying a link."""
    hours = int(LINK_LIFETIME.total_seconds() // 3600)
    text = (
        f"Hello {name},\n\n"
        "Please confirm that this is your e-mail address, so that your Herald account can "
        f"send live notifications:\n\n{link}\n\n"
        f"The link works once, within {hours} hours. If you did not sign up for Herald, "
        "ignore this message.\n"
    )
    return "Confirm your e-mail address for Herald", text


async def verify(session: AsyncSession, *, token: str) -> User | None:
    """Use a link: mark its user's address verified and release the tenants they own.

    None when the token is unknown, used, expired, or for an address the user no longer
    has. The caller commits.
    """
    if not token or len(token) > MAX_TOKEN_LENGTH:
        return None
    used = (
        await session.execute(
            update(EmailVerification)
            .where(
                EmailVerification.token_hash == _digest(token),
                EmailVerification.used_at.is_(None),
                EmailVerification.expires_at > func.now(),
            )
            .values(used_at=func.now())
            .returning(EmailVerification.user_id, EmailVerification.email)
        )
    ).first()
    if used is None:
        return None
    user = await session.scalar(
        select(User).where(User.id == used.user_id, func.lower(User.email) == used.email.lower())
    )
    if user is None:
        return None
    if user.email_verified_at is None:
        user.email_verified_at = utcnow()
    owned = select(Membership.tenant_id).where(
        Membership.user_id == user.id, Membership.role == roles.OWNER
    )
    await session.execute(delete(UnverifiedTenant).where(UnverifiedTenant.tenant_id.in_(owned)))
    return user
