"""Forgotten passwords: a link mailed to the account's address sets a new one.

Asking for a link answers the same whether or not the address has an account (the page
says "if an account exists, we sent a link"), and the mail itself is sent after the answer
(admin_ui/password_reset.py), so neither the text nor the time tells. Asking is limited per
network and per address as typed (app/auth/throttle.py; the address shares its mail bucket
with verification links), so nobody can flood an inbox through Herald.

A link carries a random token of which only the SHA-256 is stored. It works once, within
`LINK_LIFETIME`; opening it only shows a form (mail scanners fetch links), and setting the
password uses up every link of the account, ends every session of it (the user's
`session_generation` goes up, app/auth/accounts.py) and clears nothing else. Setting the
password is a door like a sign-in: limited per network, and the token is checked before
argon2 runs, so unknown tokens cost no hashing.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta
from urllib.parse import quote

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth import accounts
from app.auth.accounts import AccountError, Client, Guards, TooManyAttempts
from app.auth.models import PasswordReset, User
from app.auth.throttle import MAIL_PER_EMAIL, PASSWORD_RESET_PER_NETWORK
from app.db import utcnow

LINK_LIFETIME = timedelta(hours=1)
MAX_TOKEN_LENGTH = 100
INVALID_LINK = "This link does not work: it expired or was used already. Ask for a new one."


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _plausible(token: str) -> bool:
    return 0 < len(token) <= MAX_TOKEN_LENGTH


async def request_link(
    session: AsyncSession, guards: Guards, client: Client, *, email: str, public_url: str
) -> tuple[User, str] | None:
    """A reset link for the account of `email` (in the caller's transaction; the caller
    commits, then mails it), or None when no account has the address. TooManyAttempts
    over a limit, for known and unknown addresses alike; AccountError for a malformed one."""
    email = accounts.normalise_email(email)
    throttle = guards.throttle
    wait = await throttle.take(
        (f"reset:net:{client.network}", PASSWORD_RESET_PER_NETWORK),
        (f"mail:{throttle.email_key(email)}", MAIL_PER_EMAIL),
    )
    if wait:
        raise TooManyAttempts(wait)
    user = await session.scalar(select(User).where(func.lower(User.email) == email.lower()))
    if user is None:
        return None
    # The account's spent links go as new ones come (ix_password_resets_user_id).
    await session.execute(
        delete(PasswordReset).where(
            PasswordReset.user_id == user.id,
            or_(PasswordReset.used_at.is_not(None), PasswordReset.expires_at <= func.now()),
        )
    )
    token = secrets.token_urlsafe(32)
    session.add(
        PasswordReset(
            token_hash=_digest(token), user_id=user.id, expires_at=utcnow() + LINK_LIFETIME
        )
    )
    await session.flush()
    return user, f"{public_url}/password-reset/{quote(token)}"


def reset_mail(name: str, link: str) -> tuple[str, str]:
    """Subject and text of the message carrying a reset link."""
    minutes = int(LINK_LIFETIME.total_seconds() // 60)
    text = (
        f"Hello {name},\n\n"
        "Someone, hopefully you, asked to reset the password of your Herald account. "
        f"Choose a new one here:\n\n{link}\n\n"
        f"The link works once, within {minutes} minutes. If you did not ask, ignore this "
        "message: your password stays as it is.\n"
    )
    return "Reset your Herald password", text


async def link_works(session: AsyncSession, *, token: str) -> bool:
    """Whether a link can still be used; looking uses nothing up."""
    if not _plausible(token):
        return False
    found = await session.scalar(
        select(PasswordReset.user_id).where(
            PasswordReset.token_hash == _digest(token),
            PasswordReset.used_at.is_(None),
            PasswordReset.expires_at > func.now(),
        )
    )
    return found is not None


async def reset_password(
    session: AsyncSession, guards: Guards, client: Client, *, token: str, password: str
) -> User:
    """Set the password of the link's account and end all its sessions; every link of the
    account stops working. The caller commits. AccountError for a link that does not work
    or a password that cannot be set; TooManyAttempts over the network's limit."""
    accounts.check_new_password(password)
    wait = await guards.throttle.take((f"reset:net:{client.network}", PASSWORD_RESET_PER_NETWORK))
    if wait:
        raise TooManyAttempts(wait)
    if not await link_works(session, token=token):
        raise AccountError(INVALID_LINK)
    await session.commit()  # hand the connection back while hashing
    password_hash = await guards.passwords.hash(password)
    used = await session.scalar(
        update(PasswordReset)
        .where(
            PasswordReset.token_hash == _digest(token),
            PasswordReset.used_at.is_(None),
            PasswordReset.expires_at > func.now(),
        )
        .values(used_at=func.now())
        .returning(PasswordReset.user_id)
    )
    if used is None:  # used by a concurrent request while we hashed
        raise AccountError(INVALID_LINK)
    await session.execute(
        update(PasswordReset)
        .where(PasswordReset.user_id == used, PasswordReset.used_at.is_(None))
        .values(used_at=func.now())
    )
    user = await session.scalar(
        update(User)
        .where(User.id == used)
        .values(password_hash=password_hash, session_generation=User.session_generation + 1)
        .returning(User)
        .execution_options(populate_existing=True)
    )
    if user is None:
        raise AccountError(INVALID_LINK)
    return user
