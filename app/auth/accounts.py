"""Dashboard accounts: sign-up (a tenant and its owner), sign-in, passwords and sessions.

Every door that takes a password is guarded the same way (`Guards`): rate limits first,
before any work (app/auth/throttle.py); the database read next, its connection handed back
before the password is hashed; argon2 then runs in the bounded pool (app/auth/passwords.py),
never on the event loop. A sign-in checks the password before it answers anything else, and
answers an unknown e-mail exactly as a known one with a wrong password: the same text, the
same statements, one argon2 verification each.

Sessions are cookies (admin_ui/session.py) stamped with the user's `session_generation`;
raising it (`end_all_sessions`, a password change) ends every session stamped before.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth import roles, verification
from app.auth.devices import DeviceTokens
from app.auth.models import Membership, User
from app.auth.passwords import Passwords
from app.auth.throttle import (
    MAIL_PER_EMAIL,
    SIGN_IN_PER_EMAIL,
    SIGN_IN_PER_NETWORK,
    SIGN_UP_PER_EMAIL,
    SIGN_UP_PER_NETWORK,
    AccountThrottle,
)
from app.db import utcnow
from app.tenants.models import Tenant
from app.tenants.service import create_tenant

MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 1024
MAX_NAME_LENGTH = 200
# A user acts as `user:<e-mail>` in audit entries and `created_by`: 200-character columns.
MAX_EMAIL_LENGTH = 200 - len("user:")
WRONG_CREDENTIALS = "The e-mail or password is wrong."


class AccountError(ValueError):
    """A sign-up or sign-in that cannot proceed; `field` names the form field at fault."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class TooManyAttempts(AccountError):
    """Over a rate limit, or within a sign-in delay: try again in `retry_after` seconds."""

    def __init__(self, seconds: float) -> None:
        self.retry_after = max(1, math.ceil(seconds))
        super().__init__(f"Too many attempts. Try again in {_duration(self.retry_after)}.")


@dataclass(frozen=True)
class Guards:
    """What every password door uses; one of each per process (app state)."""

    passwords: Passwords
    throttle: AccountThrottle
    devices: DeviceTokens


@dataclass(frozen=True)
class Client:
    """Who is at the door: the network the request came from (app/auth/client_ip.py), and
    the device cookie it carries, if any (app/auth/devices.py)."""

    network: str
    device_token: str | None = None


@dataclass(frozen=True)
class TenantAccess:
    tenant: Tenant
    role: str


@dataclass(frozen=True)
class SignedUp:
    user: User
    tenant: Tenant
    link: str  # the e-mail verification link, to mail once the caller has committed


@dataclass(frozen=True)
class SignedIn:
    user: User
    device_token: str  # for the device cookie: this browser now knows the account


def normalise_email(email: str) -> str:
    try:
        return validate_email(email.strip(), check_deliverability=False).normalized
    except EmailNotValidError as error:
        raise AccountError(str(error), field="email") from None


def _check_new_password(password: str, field: str = "password") -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(
            f"The password must be at least {MIN_PASSWORD_LENGTH} characters.", field=field
        )
    if len(password) > MAX_PASSWORD_LENGTH:
        raise AccountError(f"At most {MAX_PASSWORD_LENGTH} characters, please.", field=field)


def _check_sign_up(email: str, name: str, password: str, company: str) -> str:
    """The normalised e-mail of a valid sign-up form; AccountError naming a bad field."""
    email = normalise_email(email)
    if len(email) > MAX_EMAIL_LENGTH:
        raise AccountError(f"At most {MAX_EMAIL_LENGTH} characters, please.", field="email")
    _check_new_password(password)
    if not company.strip() or len(company) > MAX_NAME_LENGTH:
        raise AccountError(
            f"A company name of 1 to {MAX_NAME_LENGTH} characters is required.", field="company"
        )
    if len(name) > MAX_NAME_LENGTH:
        raise AccountError(f"The name is longer than {MAX_NAME_LENGTH} characters.", field="name")
    return email


async def create_account(
    session: AsyncSession,
    passwords: Passwords,
    *,
    email: str,
    name: str,
    password: str,
    company: str,
    verified: bool,
) -> tuple[User, Tenant]:
    """A tenant and its owner, in the caller's transaction. `verified`: made by an operator,
    whose word stands for the address; otherwise the tenant awaits verification."""
    email = _check_sign_up(email, name, password, company)
    password_hash = await passwords.hash(password)
    user = await add_user(
        session, email=email, name=name, password_hash=password_hash, verified=verified
    )
    tenant = await create_tenant(session, name=company.strip(), actor=f"user:{user.email}")
    session.add(Membership(user_id=user.id, tenant_id=tenant.id, role=roles.OWNER))
    if not verified:
        await verification.hold_live_keys(session, tenant_id=tenant.id)
    await session.flush()
    return user, tenant


async def add_user(
    session: AsyncSession, *, email: str, name: str, password_hash: str, verified: bool
) -> User:
    """A user of a checked, normalised e-mail and an already hashed password, in the
    caller's transaction; AccountError when the address has an account (the caller's
    transaction is then rolled back)."""
    taken = await session.scalar(select(User.id).where(func.lower(User.email) == email.lower()))
    if taken is not None:
        raise AccountError("An account with this e-mail already exists.", field="email")
    user = User(
        email=email,
        name=name.strip() or email,
        password_hash=password_hash,
        email_verified_at=utcnow() if verified else None,
    )
    session.add(user)
    try:
        await session.flush()
    except IntegrityError:  # a concurrent sign-up took the e-mail after our check
        await session.rollback()
        raise AccountError("An account with this e-mail already exists.", field="email") from None
    return user


def check_new_password(password: str, field: str = "password") -> None:
    """AccountError (naming `field`) for a password too short or too long to be set."""
    _check_new_password(password, field)


def check_name(name: str) -> None:
    if len(name) > MAX_NAME_LENGTH:
        raise AccountError(f"The name is longer than {MAX_NAME_LENGTH} characters.", field="name")


async def sign_up(
    session: AsyncSession,
    guards: Guards,
    client: Client,
    *,
    email: str,
    name: str,
    password: str,
    company: str,
    public_url: str,
) -> SignedUp:
    """Self-service sign-up, in the caller's transaction: the tenant can use test keys at
    once, live keys once the owner has followed the returned link."""
    normalised = _check_sign_up(email, name, password, company)
    wait = await guards.throttle.take(
        (f"signup:net:{client.network}", SIGN_UP_PER_NETWORK),
        (f"signup:email:{guards.throttle.email_key(normalised)}", SIGN_UP_PER_EMAIL),
    )
    if wait:
        raise TooManyAttempts(wait)
    user, tenant = await create_account(
        session,
        guards.passwords,
        email=normalised,
        name=name,
        password=password,
        company=company,
        verified=False,
    )
    link = await verification.issue_link(session, user=user, public_url=public_url)
    await session.flush()
    return SignedUp(user, tenant, link)


async def sign_in(
    session: AsyncSession, guards: Guards, client: Client, *, email: str, password: str
) -> SignedIn:
    """Check an e-mail and password, within the limits of app/auth/throttle.py.

    Raises TooManyAttempts over a rate limit (before any hashing), or, after the password
    was checked, while this e-mail is delayed for this network (an attempt then is neither
    counted nor told whether it was right, unless the browser is trusted for the account);
    AccountError(WRONG_CREDENTIALS) otherwise. Unknown and known e-mails go the same way.
    """
    throttle = guards.throttle
    email_key = throttle.email_key(email)
    wait = await throttle.take((f"signin:net:{client.network}", SIGN_IN_PER_NETWORK))
    if wait:
        raise TooManyAttempts(wait)
    trusted = guards.devices.trusts(client.device_token, email)
    delayed = await throttle.delay(email_key, client.network)
    if not delayed and not trusted:
        # Only attempts whose answer tells something spend the account's budget.
        wait = await throttle.take((f"signin:email:{email_key}", SIGN_IN_PER_EMAIL))
        if wait:
            raise TooManyAttempts(wait)
    user = await session.scalar(select(User).where(func.lower(User.email) == email.strip().lower()))
    await session.commit()  # hand the connection back: the hash may wait its turn
    right = await guards.passwords.verify(user.password_hash if user else None, password)
    if user is not None and right and (trusted or not delayed):
        await throttle.succeeded(email_key, client.network)
        user.last_sign_in_at = utcnow()
        if guards.passwords.needs_rehash(user.password_hash):
            user.password_hash = await guards.passwords.hash(password)
        session.add(user)
        await session.commit()
        return SignedIn(user, guards.devices.issue(email))
    if delayed:
        raise TooManyAttempts(delayed)
    await throttle.failed(email_key, client.network)
    raise AccountError(WRONG_CREDENTIALS)


async def change_password(
    session: AsyncSession,
    guards: Guards,
    client: Client,
    *,
    user_id: uuid.UUID,
    current: str,
    new: str,
) -> User:
    """Replace a user's password, ending every session of theirs (the caller restamps its
    own and commits). The current password is a guess like any sign-in: same limits."""
    _check_new_password(new, field="new_password")
    user = await get_user(session, user_id=user_id)
    if user is None:
        raise AccountError("This account no longer exists.")
    wait = await guards.throttle.take(
        (f"signin:net:{client.network}", SIGN_IN_PER_NETWORK),
        (f"signin:email:{guards.throttle.email_key(user.email)}", SIGN_IN_PER_EMAIL),
    )
    if wait:
        raise TooManyAttempts(wait)
    password_hash = user.password_hash
    await session.commit()  # hand the connection back while hashing
    if not await guards.passwords.verify(password_hash, current):
        raise AccountError("This is not your current password.", field="current_password")
    user.password_hash = await guards.passwords.hash(new)
    user.session_generation += 1
    session.add(user)
    await session.flush()
    return user


async def end_all_sessions(session: AsyncSession, *, user_id: uuid.UUID) -> None:
    """Sign the user out everywhere: every session cookie issued so far stops working."""
    await session.execute(
        update(User)
        .where(User.id == user_id)
        .values(session_generation=User.session_generation + 1)
    )


async def resend_link(session: AsyncSession, guards: Guards, *, user: User, public_url: str) -> str:
    """A fresh verification link for a user not verified yet (the caller commits, then mails)."""
    if user.email_verified_at is not None:
        raise AccountError("Your e-mail address is verified already.")
    wait = await guards.throttle.take(
        (f"mail:{guards.throttle.email_key(user.email)}", MAIL_PER_EMAIL)
    )
    if wait:
        raise TooManyAttempts(wait)
    return await verification.issue_link(session, user=user, public_url=public_url)


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


def _duration(seconds: int) -> str:
    if seconds < 120:
        return "1 second" if seconds == 1 else f"{seconds} seconds"
    return f"{math.ceil(seconds / 60)} minutes"
