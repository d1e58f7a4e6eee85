"""Dashboard accounts: sign-up (a tenant and its owner), sign-in with lock-out, memberships."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from email_validator import EmailNotValidError, validate_email
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth.models import Membership, User
from app.db import utcnow
from app.tenants.models import Tenant
from app.tenants.service import create_tenant

MIN_PASSWORD_LENGTH = 10
MAX_NAME_LENGTH = 200
# A user acts as `user:<e-mail>` in audit entries and `created_by`: 200-character columns.
MAX_EMAIL_LENGTH = 200 - len("user:")
_hasher = PasswordHasher()
# Verified against when the e-mail is unknown, so both paths cost one argon2 verification.
_DUMMY_HASH = _hasher.hash("not a real password")


class AccountError(ValueError):
    """A sign-up or sign-in that cannot proceed; `field` names the form field at fault."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class AccountLocked(AccountError):
    def __init__(self, until: datetime) -> None:
        super().__init__("Too many failed sign-ins: this account is locked for a while.")
        self.until = until


@dataclass(frozen=True)
class TenantAccess:
    tenant: Tenant
    role: str


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def normalise_email(email: str) -> str:
    try:
        return validate_email(email.strip(), check_deliverability=False).normalized
    except EmailNotValidError as error:
        raise AccountError(str(error), field="email") from None


async def sign_up(
    session: AsyncSession, *, email: str, name: str, password: str, company: str
) -> tuple[User, Tenant]:
    """Create a tenant and its owner in the caller's transaction."""
    email = normalise_email(email)
    if len(email) > MAX_EMAIL_LENGTH:
        raise AccountError(f"At most {MAX_EMAIL_LENGTH} characters, please.", field="email")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(
            f"The password must be at least {MIN_PASSWORD_LENGTH} characters.", field="password"
        )
    if not company.strip() or len(company) > MAX_NAME_LENGTH:
        raise AccountError(
            f"A company name of 1 to {MAX_NAME_LENGTH} characters is required.", field="company"
        )
    if len(name) > MAX_NAME_LENGTH:
        raise AccountError(f"The name is longer than {MAX_NAME_LENGTH} characters.", field="name")
    taken = await session.scalar(select(User.id).where(func.lower(User.email) == email.lower()))
    if taken is not None:
        raise AccountError("An account with this e-mail already exists.", field="email")
    user = User(email=email, name=name.strip() or email, password_hash=hash_password(password))
    session.add(user)
    try:
        await session.flush()
    except IntegrityError:  # a concurrent sign-up took the e-mail after our check
        await session.rollback()
        raise AccountError("An account with this e-mail already exists.", field="email") from None
    tenant = await create_tenant(session, name=company.strip(), actor=f"user:{user.email}")
    session.add(Membership(user_id=user.id, tenant_id=tenant.id, role="owner"))
    await session.flush()
    return user, tenant


async def sign_in(
    session: AsyncSession,
    *,
    email: str,
    password: str,
    max_failures: int,
    lockout_seconds: int,
) -> User:
    """Check the password; after `max_failures` failures in a row, lock the account."""
    user = await session.scalar(
        select(User).where(func.lower(User.email) == email.strip().lower()).with_for_update()
    )
    if user is None:
        _verify(_DUMMY_HASH, password)
        raise AccountError("The e-mail or password is wrong.")
    now = utcnow()
    if user.locked_until is not None and user.locked_until > now:
        raise AccountLocked(user.locked_until)
    if not _verify(user.password_hash, password):
        user.failed_sign_ins += 1
        if user.failed_sign_ins >= max_failures:
            user.failed_sign_ins = 0
            user.locked_until = now + timedelta(seconds=lockout_seconds)
            await session.commit()
            raise AccountLocked(user.locked_until)
        await session.commit()
        raise AccountError("The e-mail or password is wrong.")
    user.failed_sign_ins, user.locked_until, user.last_sign_in_at = 0, None, now
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(password)
    await session.commit()
    return user


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


async def tenants_of(session: AsyncSession, *, user_id: uuid.UUID) -> list[TenantAccess]:
    rows = await session.execute(
        select(Tenant, Membership.role)
        .join(Membership, Membership.tenant_id == Tenant.id)
        .where(Membership.user_id == user_id)
        .order_by(Membership.created_at)
    )
    return [TenantAccess(tenant=tenant, role=role) for tenant, role in rows.all()]


async def get_user(session: AsyncSession, *, user_id: uuid.UUID) -> User | None:
    return await session.scalar(select(User).where(User.id == user_id))
