"""API keys: issuing, listing, revoking, and authenticating a request's bearer key.

A key is `hk_live_` or `hk_test_` followed by 32 base62 characters. Only its SHA-256 is
stored, with a short prefix for display; the secret is returned once, at creation.

A key's mode bounds what it can do to other keys: a test key sees, creates and revokes test
keys only (a leaked one cannot mint a live key or revoke the live ones); a live key manages
both. A dashboard member's role bounds it too: issuing and revoking take the acting
member's role and refuse one that may not manage keys (app/auth/roles.py). A tenant holds at
most MAX_ACTIVE_KEYS keys not revoked, and a key may carry a rate limit of its own below its
tenant's.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import string
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

from sqlalchemy import func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit import service as audit
from app.auth import roles
from app.auth.models import KEY_MODES, SCOPES, ApiKey, UnverifiedTenant
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
# Refusals of unknown and revoked keys are remembered this long by each process.
REFUSAL_SECONDS = 10.0
# Database lookups of keys not in a process's memory, at once; the request pool has 20.
MAX_LOOKUPS = 4
LAST_USED_RESOLUTION = timedelta(minutes=1)
UNVERIFIED_LIVE_KEY = (
    "This live key works once an owner of the tenant has verified their e-mail address in "
    "the dashboard; test keys work meanwhile."
)


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
    """Who is calling the API: a tenant, through one of its keys (or, with no key, a
    dashboard member sending a test to themselves: app/notifications/self_test.py)."""

    tenant_id: uuid.UUID
    key_id: uuid.UUID | None
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
    role: str | None = None,
    rate_per_second: float | None = None,
    burst: int | None = None,
) -> IssuedKey:
    """Issue a key; `caller_mode` is the mode of the API key asking (None: a dashboard user),
    `role` the acting dashboard member's (None: an API key or an operator, not a member).

    Raises RoleNotAllowed, before anything else, for a role that may not manage keys.
    """
    if role is not None:
        roles.require_key_manager(role)
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
    role: str | None = None,
) -> ApiKey | None:
    """Revoke a key of the tenant; revoking a revoked key changes nothing and is not audited.

    `role` is the acting dashboard member's (None: an API key or an operator); one that may
    not manage keys is refused (RoleNotAllowed) before anything is read or written.
    """
    if role is not None:
        roles.require_key_manager(role)
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
    """A per-process memory of looked-up keys, and the gate in front of the lookups.

    A valid key's principal is trusted for `ttl` seconds (HERALD_API_KEY_CACHE_SECONDS, at
    most 1 s): that spares a database round trip per request while keeping revocation
    effective across every process within `ttl`. A refused key is remembered too, so a
    client repeating a bad key costs one SELECT, not one per request: unknown and revoked
    keys for `REFUSAL_SECONDS` (neither can become valid: secrets are random and revocation
    is final), a live key of an unverified tenant for `ttl` only (verification lifts it).

    Each side holds at most `max_entries`, the oldest dropped first, so a flood of random
    keys fills the refusal side and cannot push valid keys out. Lookups of keys not in
    memory take one of `MAX_LOOKUPS` slots (and look in memory again once they have one, so
    a burst of one key makes a query or two, not one per request): a flood of unknown keys
    holds at most that many database connections, leaving the rest of the pool to requests
    with keys that work.
    """

    def __init__(
        self, ttl: float, max_entries: int = 10_000, max_lookups: int = MAX_LOOKUPS
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: dict[bytes, tuple[float, Principal]] = {}
        self._refusals: dict[bytes, tuple[float, str]] = {}
        self._lookups = asyncio.Semaphore(max_lookups)

    def get(self, key_hash: bytes) -> Principal | None:
        return _fresh(self._entries, key_hash)

    def put(self, key_hash: bytes, principal: Principal) -> None:
        if self.ttl > 0:
            _remember(self._entries, key_hash, self.ttl, principal, self.max_entries)

    def refusal(self, key_hash: bytes) -> str | None:
        """Why the key was refused, if it was refused lately."""
        return _fresh(self._refusals, key_hash)

    def refuse(self, key_hash: bytes, reason: str, seconds: float = REFUSAL_SECONDS) -> KeyRejected:
        """Remember a refusal for `seconds` (not at all for 0); the error to raise."""
        if seconds > 0:
            _remember(self._refusals, key_hash, seconds, reason, self.max_entries)
        return KeyRejected(reason)

    def lookup_slot(self) -> asyncio.Semaphore:
        return self._lookups

    def __len__(self) -> int:
        return len(self._entries) + len(self._refusals)


V = TypeVar("V")


def _fresh(entries: dict[bytes, tuple[float, V]], key_hash: bytes) -> V | None:
    hit = entries.get(key_hash)
    if hit is None:
        return None
    if hit[0] < time.monotonic():
        del entries[key_hash]
        return None
    return hit[1]


def _remember(
    entries: dict[bytes, tuple[float, V]], key_hash: bytes, ttl: float, value: V, limit: int
) -> None:
    entries.pop(key_hash, None)
    while len(entries) >= limit:  # dicts keep insertion order: the first is the oldest
        del entries[next(iter(entries))]
    entries[key_hash] = (time.monotonic() + ttl, value)


async def authenticate(
    sessions: Callable[[], AsyncSession], secret: str, cache: KeyCache
) -> Principal:
    """Resolve a bearer secret to its principal; refuse it before anything is written.

    A key in memory costs no session: one is opened from `sessions` only to look a key up.
    """
    if not KEY_PATTERN.match(secret):
        raise KeyRejected("The API key is malformed: expected hk_live_… or hk_test_… .")
    key_hash = hash_key(secret)
    cached = cache.get(key_hash)
    if cached is not None:
        return cached
    refused = cache.refusal(key_hash)
    if refused is not None:
        raise KeyRejected(refused)
    async with cache.lookup_slot():
        # Another request may have looked the key up while this one waited for the slot.
        cached = cache.get(key_hash)
        if cached is not None:
            return cached
        refused = cache.refusal(key_hash)
        if refused is not None:
            raise KeyRejected(refused)
        async with sessions() as session:
            return await _look_up(session, key_hash, cache)


async def _look_up(session: AsyncSession, key_hash: bytes, cache: KeyCache) -> Principal:
    # A read first: only a key that authenticates records its use.
    row = (
        await session.execute(
            select(
                ApiKey.id,
                ApiKey.tenant_id,
                ApiKey.prefix,
                ApiKey.mode,
                ApiKey.scopes,
                ApiKey.revoked_at,
                Tenant.plan,
                ApiKey.rate_per_second,
                ApiKey.burst,
                UnverifiedTenant.tenant_id.is_not(None).label("held"),
                or_(
                    ApiKey.last_used_at.is_(None),
                    ApiKey.last_used_at < func.now() - LAST_USED_RESOLUTION,
                ).label("stale"),
            )
            .join(Tenant, Tenant.id == ApiKey.tenant_id)
            .outerjoin(UnverifiedTenant, UnverifiedTenant.tenant_id == ApiKey.tenant_id)
            .where(ApiKey.key_hash == key_hash)  # the unique index on key_hash
        )
    ).first()
    if row is None or row.revoked_at is not None or (row.mode == "live" and row.held):
        await session.rollback()  # nothing was written; the connection goes back
        if row is None:
            raise cache.refuse(key_hash, "The API key is not recognised.")
        if row.revoked_at is not None:
            raise cache.refuse(key_hash, "The API key has been revoked.")
        raise cache.refuse(key_hash, UNVERIFIED_LIVE_KEY, seconds=cache.ttl)
    if row.stale:
        # Recorded to the minute: a busy key would otherwise rewrite its row (and queue on
        # its lock) once a second in every process.
        await session.execute(
            update(ApiKey).where(ApiKey.id == row.id).values(last_used_at=func.now())
        )
    await session.commit()
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
