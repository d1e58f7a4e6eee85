"""Who a checked ID token signs in, and where a password no longer does.

A provider's word counts for its own tenant only. The person is found by the e-mail address
the provider vouches for (`email_verified`): an unverified address signs nobody in. A member
of the tenant with that address signs in. Anyone else joins the tenant (just in time) with
the configured default role when the address's domain is one of the tenant's SSO domains, as
a new user (with no usable password: an unguessable one, hashed) or as an existing Herald
user who belongs to other tenants; otherwise they are refused and told to ask for an invite.
Joining takes a seat of the tenant's plan (app/auth/members.py): when its members and the
invites pending for other addresses fill the plan's `members`, the person is refused and
told so; one who had an invite pending joins in its seat, and the invite is dropped.

"Require SSO" refuses password sign-in to the tenant's members except its owners: owners
keep their password as the way back in (break-glass) should the provider fail or the
settings be wrong, since only an owner can fix them.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit import service as audit
from app.auth import members, roles
from app.auth.accounts import MAX_EMAIL_LENGTH, MAX_NAME_LENGTH, AccountError, normalise_email
from app.auth.models import MemberInvite, Membership, User
from app.auth.passwords import Passwords
from app.auth.sso.config import domains_of, tenants_requiring_sso
from app.auth.sso.models import SsoConfig
from app.auth.sso.oidc import Identity, SignInFailed
from app.db import utcnow


@dataclass(frozen=True)
class SsoSignIn:
    user: User
    tenant_id: uuid.UUID
    joined: bool  # became a member with this sign-in


async def sign_in(
    session: AsyncSession, passwords: Passwords, *, config: SsoConfig, identity: Identity
) -> SsoSignIn:
    """The user the provider vouched for, a member of the config's tenant (in the caller's
    transaction: it commits); SignInFailed with the reason otherwise."""
    if not identity.email_verified:
        raise SignInFailed(
            "Your identity provider has not verified your e-mail address, so Herald cannot "
            "use it to sign you in."
        )
    try:
        email = normalise_email(identity.email)
    except AccountError:
        raise SignInFailed("The e-mail address your provider gave is not valid.") from None
    if len(email) > MAX_EMAIL_LENGTH:
        raise SignInFailed("The e-mail address your provider gave is too long for Herald.")
    tenant_id = config.tenant_id
    user = await _user_by_email(session, email)
    if user is not None:
        role = await session.scalar(
            select(Membership.role).where(
                Membership.user_id == user.id, Membership.tenant_id == tenant_id
            )
        )
        if role is not None:
            user.last_sign_in_at = utcnow()
            return SsoSignIn(user, tenant_id, joined=False)
    domain = email.rsplit("@", 1)[1].lower()
    if domain not in await domains_of(session, tenant_id=tenant_id):
        raise SignInFailed(
            f"{email} is not a member of this Herald account, and people of {domain} do not "
            "join it by signing in. Ask one of its owners to invite you."
        )
    # Under the tenant row's lock until the caller commits: joins one at a time.
    try:
        await members.check_join(session, tenant_id=tenant_id, email=email, counting_invites=True)
    except members.MembersLimitReached as refusal:
        raise SignInFailed(str(refusal)) from None
    # Their pending invite, if any, is moot now: its seat is the one they take.
    await session.execute(
        delete(MemberInvite).where(
            MemberInvite.tenant_id == tenant_id, func.lower(MemberInvite.email) == email.lower()
        )
    )
    if user is None:
        user = await _new_user(session, passwords, email=email, name=identity.name)
    session.add(Membership(user_id=user.id, tenant_id=tenant_id, role=config.default_role))
    user.last_sign_in_at = utcnow()
    await session.flush()
    await audit.append(
        session,
        tenant_id=tenant_id,
        actor=f"user:{email}",
        action="member.joined",
        target=f"user:{email}",
        details={"role": config.default_role, "via": "sso", "issuer": config.issuer},
    )
    return SsoSignIn(user, tenant_id, joined=True)


async def _user_by_email(session: AsyncSession, email: str) -> User | None:
    # uq_users_email_lower
    return await session.scalar(select(User).where(func.lower(User.email) == email.lower()))


async def _new_user(session: AsyncSession, passwords: Passwords, *, email: str, name: str) -> User:
    # A password nobody knows, hashed like any other: the account signs in through its
    # provider, and a password sign-in attempt costs and answers as for anyone.
    password_hash = await passwords.hash(secrets.token_urlsafe(32))
    user = User(
        email=email,
        name=(name.strip() or email)[:MAX_NAME_LENGTH],
        password_hash=password_hash,
        email_verified_at=utcnow(),  # the provider verified it
    )
    try:
        async with session.begin_nested():
            session.add(user)
            await session.flush()
    except IntegrityError:  # the same person signing in twice at once
        existing = await _user_by_email(session, email)
        if existing is None:
            raise
        return existing
    return user


async def password_tenants(
    session: AsyncSession, *, memberships: list[tuple[uuid.UUID, str]]
) -> set[uuid.UUID]:
    """Of (tenant id, role) pairs, the tenants a password sign-in may enter: all but those
    that require SSO, where owners alone may still use a password."""
    requiring = await tenants_requiring_sso(
        session, tenant_ids=[tenant_id for tenant_id, role in memberships if role != roles.OWNER]
    )
    return {tenant_id for tenant_id, _ in memberships if tenant_id not in requiring}
