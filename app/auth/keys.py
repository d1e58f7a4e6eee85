"""API keys: issuing, listing, revoking, and authenticating a request's bearer key.

A key is `hk_live_` or `hk_test_` followed by 32 base62 characters. Only its SHA-256 is
stored, with a short prefix for display; the secret is returned once, at creation.

A key's mode bounds what it can do to other keys: a test key sees, creates and revokes test
keys only (a leaked one cannot mint a live key or revoke the live ones); a live key manages
both. A tenant holds at most MAX_ACTIVE_KEYS keys not revoked, and a key may carry a rate
limit of its own below its tenant's.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import string
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit import service as audit
from app.auth.models import KEY_MODES, SCOPES, ApiKey
from app.modes import MODES
from app.pagination import Page, keyset_page
from app.tenants.models import Tenant

KEY_PATTERN = re.compile(r"^hk_(live|test)_[0-9A-Za-z]{32}$")
_ALPHABET = string.ascii_letters + string.digits
PREFIX_LENGTH = len("hk_live_") + 6


MAX_NAME_LENGTH = 100
#: Keys not revoked a tenant may hold: each is a credential to guard, and every one shares
#: the tenant's rate limit anyway.
MAX_ACTIVE_KEYS = 100
#: Bounds of a key's own rate limit (it can only lower its tenant's).
MAX_KEY_RATE = 10_000.0
MAX_KEY_BURST = 20_000


class InvalidKeyRequest(ValueError):
    """A key cannot be issued as asked; `field` names what is wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class KeyLimitReached(Exception):
    """The tenant holds MAX_ACTIVE_KEYS keys not revoked already."""


class KeyForbidden(Exception):
    """The caller may not do this to keys of that mode; the message says why (a 403)."""


class KeyRejected(Exception):
    """The presented key cannot authenticate; the message says why, for the 401 detail."""


@dataclass(frozen=True)
class Principal:
    """Who is calling the API: a tenant, through one of its keys."""

    tenant_id: uuid.UUID
    key_id: uuid.UUID
    key_prefix: str
    mode: str
    scopes: frozenset[str]
    plan: str = "free"  # the tenant's plan, for its rate limits
    # The key's own limit, when it has one: requests per second and burst.
    rate_per_second: float | None = None
    burst: int | None = None

    @property
    def actor(self) -> str:
        return f"api_key:{self.key_prefix}"


@dataclass(frozen=True)
class IssuedKey:
    key: ApiKey
    secret: str


def hash_key(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def generate_secret(mode: str) -> str:
    return f"hk_{mode}_" + "".join(secrets.choice(_ALPHABET) for _ in range(32))


def modes_visible_to(mode: str) -> tuple[str, ...]:
    """The modes of the keys a key of `mode` may see and revoke."""
    return MODES if mode == "live" else (mode,)


async def issue_key(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    name: str,
    mode: str,
    scopes: list[str],
    actor: str,
    caller_mode: str | None = None,
    rate_per_second: float | None = None,
    burst: int | None = None,
) -> IssuedKey:
    """Issue a key; `caller_mode` is the mode of the API key asking (None: a dashboard user)."""
    _check_request(name, mode, scopes)
    _check_rate(rate_per_second, burst)
    if caller_mode is not None and mode not in modes_visible_to(caller_mode):
        raise KeyForbidden(f"A {caller_mode}-mode key cannot create {mode} keys.")
    await _check_room(session, tenant_id)
    secret = generate_secret(mode)
    key = ApiKey(
        tenant_id=tenant_id,
        name=name,
        prefix=secret[:PREFIX_LENGTH],
        key_hash=hash_key(secret),
        mode=mode,
        scopes=sorted(set(scopes)),
        created_by=actor,
        rate_per_second=rate_per_second,
        burst=burst,
    )
    session.add(key)
    await session.flush()
    await audit.append(
        session,
        tenant_id=tenant_id,
        actor=actor,
        action="api_key.created",
        target=str(key.id),
        details={
            "prefix": key.prefix,
            "mode": mode,
            "scopes": key.scopes,
            "name": name,
            "rate_per_second": rate_per_second,
            "burst": burst,
        },
    )
    return IssuedKey(key=key, secret=secret)


def _check_request(name: str, mode: str, scopes: list[str]) -> None:
    if not name.strip() or len(name) > MAX_NAME_LENGTH:
        raise InvalidKeyRequest("name", f"a name of 1 to {MAX_NAME_LENGTH} characters is required")
    if mode not in KEY_MODES:
        raise InvalidKeyRequest("mode", f"mode must be one of {', '.join(KEY_MODES)}")
    if not scopes or not set(scopes) <= set(SCOPES):
        raise InvalidKeyRequest(
            "scopes", f"scopes must be a non-empty subset of {', '.join(SCOPES)}"
        )


def _check_rate(rate_per_second: float | None, burst: int | None) -> None:
    if (rate_per_second is None) != (burst is None):
        field = "burst" if burst is None else "rate_per_second"
        raise InvalidKeyRequest(field, "rate_per_second and burst are given together or not at all")
    if rate_per_second is not None and not 0 < rate_per_second <= MAX_KEY_RATE:
        raise InvalidKeyRequest("rate_per_second", f"more than 0 and at most {MAX_KEY_RATE:g}")
    if burst is not None and not 1 <= burst <= MAX_KEY_BURST:
        raise InvalidKeyRequest("burst", f"1 to {MAX_KEY_BURST}")


async def _check_room(session: AsyncSession, tenant_id: uuid.UUID) -> None:
    # The tenant's row lock serialises concurrent issues, so the cap holds exactly.
    await session.execute(select(Tenant.id).where(Tenant.id == tenant_id).with_for_update())
    active = await session.scalar(
        select(func.count())
        .select_from(ApiKey)
        .where(ApiKey.tenant_id == tenant_id, ApiKey.revoked_at.is_(None))
    )
    if (active or 0) >= MAX_ACTIVE_KEYS:
        raise KeyLimitReached(
            f"A tenant holds at most {MAX_ACTIVE_KEYS} keys that are not revoked; revoke one first."
        )


async def list_keys(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    modes: Sequence[str] = MODES,
    limit: int = 100,
    cursor: uuid.UUID | None = None,
    include_revoked: bool = True,
) -> Page[ApiKey]:
    """The tenant's keys of `modes`, newest first."""
    query = select(ApiKey).where(ApiKey.tenant_id == tenant_id, ApiKey.mode.in_(modes))
    if not include_revoked:
        query = query.where(ApiKey.revoked_at.is_(None))
    return await keyset_page(session, query, ApiKey.id, limit=limit, cursor=cursor)


async def get_key(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    key_id: uuid.UUID,
    modes: Sequence[str] = MODES,
) -> ApiKey | None:
    key: ApiKey | None = await session.scalar(
        select(ApiKey).where(
            ApiKey.tenant_id == tenant_id, ApiKey.id == key_id, ApiKey.mode.in_(modes)
        )
    )
    return key


async def revoke_key(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    key_id: uuid.UUID,
    actor: str,
    modes: Sequence[str] = MODES,
) -> ApiKey | None:
    """Revoke a key of the tenant; revoking a revoked key changes nothing and is not audited."""
    revoked: ApiKey | None = await session.scalar(
        update(ApiKey)
        .where(
            ApiKey.tenant_id == tenant_id,
            ApiKey.id == key_id,
            ApiKey.mode.in_(modes),
            ApiKey.revoked_at.is_(None),
        )
        .values(revoked_at=func.now())
        .returning(ApiKey)
    )
    if revoked is None:
        return await get_key(session, tenant_id=tenant_id, key_id=key_id, modes=modes)
    await audit.append(
        session,
        tenant_id=tenant_id,
        actor=actor,
        action="api_key.revoked",
        target=str(key_id),
        details={"prefix": revoked.prefix},
    )
    return revoked


class KeyCache:
    """A per-process memory of authenticated keys, trusted for at most `ttl` seconds.

    It spares a database round trip per request while keeping revocation effective across
    every process within `ttl` (the setting HERALD_API_KEY_CACHE_SECONDS, at most 1 s).
    """

    def __init__(self, ttl: float, max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: dict[bytes, tuple[float, Principal]] = {}

    def get(self, key_hash: bytes) -> Principal | None:
        hit = self._entries.get(key_hash)
        if hit is None or hit[0] < time.monotonic():
            return None
        return hit[1]

    def put(self, key_hash: bytes, principal: Principal) -> None:
        if self.ttl <= 0:
            return
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[key_hash] = (time.monotonic() + self.ttl, principal)


async def authenticate(session: AsyncSession, secret: str, cache: KeyCache) -> Principal:
    """Resolve a bearer secret to its principal, recording the key's last use."""
    if not KEY_PATTERN.match(secret):
        raise KeyRejected("The API key is malformed: expected hk_live_… or hk_test_… .")
    key_hash = hash_key(secret)
    cached = cache.get(key_hash)
    if cached is not None:
        return cached
    # One statement authenticates, records the use and reads the tenant's plan.
    row = (
        await session.execute(
            update(ApiKey)
            .where(
                ApiKey.key_hash == key_hash,
                ApiKey.revoked_at.is_(None),
                Tenant.id == ApiKey.tenant_id,
            )
            .values(last_used_at=func.now())
            .returning(
                ApiKey.id,
                ApiKey.tenant_id,
                ApiKey.prefix,
                ApiKey.mode,
                ApiKey.scopes,
                Tenant.plan,
                ApiKey.rate_per_second,
                ApiKey.burst,
            )
        )
    ).first()
    await session.commit()
    if row is None:
        revoked = await session.scalar(select(ApiKey.id).where(ApiKey.key_hash == key_hash))
        raise KeyRejected(
            "The API key has been revoked." if revoked else "The API key is not recognised."
        )
    principal = Principal(
        tenant_id=row.tenant_id,
        key_id=row.id,
        key_prefix=row.prefix,
        mode=row.mode,
        scopes=frozenset(row.scopes),
        plan=row.plan,
        rate_per_second=row.rate_per_second,
        burst=row.burst,
    )
    cache.put(key_hash, principal)
    return principal
