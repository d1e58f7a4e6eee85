"""Provider configs: storing them (credentials sealed), and turning them into routes.

Credentials are validated per provider (app/providers/credentials.py), then sealed with
AES-GCM under associated data naming the tenant and the config row, so a ciphertext moved
to another row or tenant does not open. Only a fingerprint is ever shown, so a tenant can
tell which key is in use: 16 hex of a keyed digest (app/crypto.py) of the canonical
credentials JSON, keyed so that nobody holding a fingerprint can confirm a guessed secret.

`routes_for` is what the delivery engine asks: which providers, in which order, carry a
tenant's channel. Test mode always gets the sandbox, whatever is configured.
"""

from __future__ import annotations

import asyncio
import json
import math
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app import crypto
from app.audit import service as audit
from app.auth import roles
from app.crypto import DecryptionError, Keyring
from app.db import utcnow
from app.delivery import outbox
from app.delivery.claims import bring_forward
from app.ids import uuid7
from app.pagination import Page, keyset_page
from app.providers import adapters
from app.providers.base import ProviderAdapter
from app.providers.breaker import REDIS_TIMEOUT, CircuitBreakers, route_key_for
from app.providers.credentials import SPECS, InvalidProviderConfig, normalize
from app.providers.models import ProviderConfig
from app.settings import Settings

log = structlog.get_logger(__name__)

MAX_NAME_LENGTH = 100
MAX_PRIORITY = 1000
MAX_RATE = 100_000.0
MAX_BURST = 100_000


@dataclass(frozen=True)
class ProviderRoute:
    config_id: uuid.UUID | None  # None: the built-in sandbox
    provider: str
    channel: str
    priority: int
    rate_per_second: float
    burst: int
    credentials: dict[str, Any] = field(repr=False)  # decrypted: kept out of reprs and logs
    options: dict[str, Any]


@dataclass(frozen=True)
class ConfigInput:
    """A new config as asked; rate and burst default to the provider's published limits."""

    channel: str
    provider: str
    name: str
    priority: int = 0
    rate_per_second: float | None = None
    burst: int | None = None
    credentials: dict[str, Any] = field(default_factory=dict, repr=False)
    options: dict[str, Any] = field(default_factory=dict)
    enabled: bool = True


@dataclass(frozen=True)
class ConfigChanges:
    """Fields to change; None keeps the stored value (credentials can never be read back)."""

    name: str | None = None
    priority: int | None = None
    rate_per_second: float | None = None
    burst: int | None = None
    credentials: dict[str, Any] | None = field(default=None, repr=False)
    options: dict[str, Any] | None = None
    enabled: bool | None = None
    # The credentials given are laid over the stored ones (a form whose secret fields left
    # empty keep what is stored) instead of replacing them.
    merge_credentials: bool = False


@dataclass(frozen=True)
class SavedConfig:
    config: ProviderConfig
    generated_secret: str | None  # a webhook signing secret made by Herald: shown once


def sandbox_route(channel: str) -> ProviderRoute:
    spec = SPECS["sandbox"]
    return ProviderRoute(None, "sandbox", channel, 0, spec.rate_per_second, spec.burst, {}, {})


# The inbox channel's one route, built in: Herald's own store (app/providers/adapters/inbox.py).
INBOX_ROUTE = ProviderRoute(None, "inbox", "inbox", 0, math.inf, 0, {}, {})


def fingerprint(credentials: dict[str, Any], keyring: Keyring) -> str:
    """The credentials' keyed digest under the current key, shortened for display."""
    canonical = json.dumps(credentials, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return keyring.digest(b"provider credentials\x00" + canonical.encode())[:16]


def associated_data(tenant_id: uuid.UUID, config_id: uuid.UUID) -> bytes:
    return f"herald:provider_configs:{tenant_id}:{config_id}".encode()


def seal_credentials(config: ProviderConfig, credentials: dict[str, Any], keyring: Keyring) -> None:
    """Encrypt `credentials` into the config under the current key, and fingerprint them."""
    plaintext = json.dumps(credentials, sort_keys=True, separators=(",", ":")).encode()
    key_id, sealed = keyring.encrypt(
        plaintext, associated_data=associated_data(config.tenant_id, config.id)
    )
    config.key_id, config.credentials_ciphertext = key_id, sealed
    config.fingerprint = fingerprint(credentials, keyring)


def open_credentials(config: ProviderConfig, keyring: Keyring) -> dict[str, Any]:
    """The decrypted credentials of a config; DecryptionError when they cannot be opened."""
    plaintext = keyring.decrypt(
        config.key_id,
        config.credentials_ciphertext,
        associated_data=associated_data(config.tenant_id, config.id),
    )
    value: dict[str, Any] = json.loads(plaintext)
    return value


def _check_numbers(
    name: str | None, priority: int | None, rate: float | None, burst: int | None
) -> None:
    if name is not None and (not name.strip() or len(name) > MAX_NAME_LENGTH):
        raise InvalidProviderConfig("name", f"a name of 1 to {MAX_NAME_LENGTH} characters")
    if priority is not None and not 0 <= priority <= MAX_PRIORITY:
        raise InvalidProviderConfig("priority", f"must be from 0 to {MAX_PRIORITY}")
    if rate is not None and not 0 < rate <= MAX_RATE:
        raise InvalidProviderConfig("rate_per_second", f"must be above 0 and at most {MAX_RATE:g}")
    if burst is not None and not 1 <= burst <= MAX_BURST:
        raise InvalidProviderConfig("burst", f"must be from 1 to {MAX_BURST}")


async def create_config(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    data: ConfigInput,
    actor: str,
    keyring: Keyring,
    role: str | None = None,
) -> SavedConfig:
    """Store a new config, credentials sealed; audited. `role`: the acting member's
    (app/auth/roles.py), None for an API key."""
    roles.require(role, "manage_providers")
    _check_numbers(data.name, data.priority, data.rate_per_second, data.burst)
    normalized = normalize(data.provider, data.channel, data.credentials, data.options)
    spec = SPECS[data.provider]
    config = ProviderConfig(
        id=uuid7(),
        tenant_id=tenant_id,
        channel=data.channel,
        provider=data.provider,
        name=data.name,
        priority=data.priority,
        rate_per_second=data.rate_per_second or spec.rate_per_second,
        burst=data.burst or spec.burst,
        options=normalized.options,
        enabled=data.enabled,
    )
    seal_credentials(config, normalized.credentials, keyring)
    session.add(config)
    await session.flush()
    await audit.append(
        session,
        tenant_id=tenant_id,
        actor=actor,
        action="provider.created",
        target=str(config.id),
        details=_summary(config),
    )
    return SavedConfig(config, normalized.generated_secret)


async def list_configs(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    limit: int = 100,
    cursor: uuid.UUID | None = None,
    channel: str | None = None,
) -> Page[ProviderConfig]:
    query = select(ProviderConfig).where(ProviderConfig.tenant_id == tenant_id)
    if channel is not None:
        query = query.where(ProviderConfig.channel == channel)
    return await keyset_page(session, query, ProviderConfig.id, limit=limit, cursor=cursor)


async def get_config(
    session: AsyncSession, *, tenant_id: uuid.UUID, config_id: uuid.UUID, lock: bool = False
) -> ProviderConfig | None:
    query = select(ProviderConfig).where(
        ProviderConfig.tenant_id == tenant_id, ProviderConfig.id == config_id
    )
    config: ProviderConfig | None = await session.scalar(query.with_for_update() if lock else query)
    return config


async def update_config(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    config_id: uuid.UUID,
    changes: ConfigChanges,
    actor: str,
    keyring: Keyring,
    role: str | None = None,
) -> SavedConfig | None:
    """Apply `changes`; None when the tenant has no such config. `role` as create_config's."""
    roles.require(role, "manage_providers")
    config = await get_config(session, tenant_id=tenant_id, config_id=config_id, lock=True)
    if config is None:
        return None
    _check_numbers(changes.name, changes.priority, changes.rate_per_second, changes.burst)
    changed = []
    for name in ("name", "priority", "rate_per_second", "burst", "enabled"):
        value = getattr(changes, name)
        if value is not None and value != getattr(config, name):
            setattr(config, name, value)
            changed.append(name)
    generated = None
    if changes.credentials is not None or changes.options is not None:
        generated = _replace_settings(config, changes, keyring)
        changed += [n for n in ("credentials", "options") if getattr(changes, n) is not None]
    if changed:
        config.updated_at = utcnow()
        await session.flush()
        await audit.append(
            session,
            tenant_id=tenant_id,
            actor=actor,
            action="provider.updated",
            target=str(config.id),
            details={**_summary(config), "changed": changed},
        )
    return SavedConfig(config, generated)


def _replace_settings(
    config: ProviderConfig, changes: ConfigChanges, keyring: Keyring
) -> str | None:
    # Both halves are validated together (Twilio's options depend on nothing secret, but
    # FCM's and APNs' checks read credentials); the stored half stands in for an absent one.
    credentials = changes.credentials
    if credentials is None or changes.merge_credentials:
        try:
            stored = open_credentials(config, keyring)
        except DecryptionError:
            raise InvalidProviderConfig(
                "credentials", "the stored credentials cannot be decrypted: send them again"
            ) from None
        credentials = {**stored, **(credentials or {})}
    options = config.options if changes.options is None else changes.options
    normalized = normalize(config.provider, config.channel, credentials, options)
    config.options = normalized.options
    # Re-sealing also moves the row to the current key after a rotation.
    seal_credentials(config, normalized.credentials, keyring)
    return normalized.generated_secret


async def delete_config(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    config_id: uuid.UUID,
    actor: str,
    role: str | None = None,
) -> bool:
    roles.require(role, "manage_providers")
    config = await get_config(session, tenant_id=tenant_id, config_id=config_id, lock=True)
    if config is None:
        return False
    details = _summary(config)
    await session.delete(config)
    await session.flush()
    await audit.append(
        session,
        tenant_id=tenant_id,
        actor=actor,
        action="provider.deleted",
        target=str(config_id),
        details=details,
    )
    return True


@dataclass(frozen=True)
class BreakerReset:
    """A breaker closed by hand: its config, and the jobs that deliver the messages that
    were waiting for it (the caller enqueues them once it has committed)."""

    config: ProviderConfig
    jobs: list[outbox.Job]


async def reset_breaker(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    config_id: uuid.UUID,
    actor: str,
    breakers: CircuitBreakers,
    role: str | None = None,
) -> BreakerReset | None:
    """Close a config's circuit breaker by hand; None when the tenant has no such config.

    The audit entry is written first, in the caller's transaction, and the caller commits
    after the reset: a reset that Redis refuses (RedisError, or TimeoutError after
    REDIS_TIMEOUT seconds) leaves no entry, and no reset goes unaudited. The messages that
    waited for the breaker are made due now in the same transaction; should it not commit,
    they go at the time they were given. `role` as create_config's.
    """
    roles.require(role, "manage_providers")
    config = await get_config(session, tenant_id=tenant_id, config_id=config_id)
    if config is None:
        return None
    route_key = route_key_for(config.id, config.channel)
    async with asyncio.timeout(REDIS_TIMEOUT):
        before = (await breakers.states(tenant_id, [route_key]))[route_key]
    await audit.append(
        session,
        tenant_id=tenant_id,
        actor=actor,
        action="provider.breaker_reset",
        target=str(config.id),
        details={**_summary(config), "breaker": before.state, "failures": before.failures},
    )
    async with asyncio.timeout(REDIS_TIMEOUT):
        released = await breakers.reset(tenant_id, route_key)
    now = utcnow()
    due = await bring_forward(session, released)
    together = outbox.batches((priority, message_id) for message_id, priority in due)
    return BreakerReset(config, [outbox.waiting(p, ids, now) for p, ids in together])


def _summary(config: ProviderConfig) -> dict[str, Any]:
    """What the audit log keeps of a config: never a credential, only its fingerprint."""
    return {
        "channel": config.channel,
        "provider": config.provider,
        "name": config.name,
        "priority": config.priority,
        "enabled": config.enabled,
        "fingerprint": config.fingerprint,
    }


async def routes_for(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    channel: str,
    mode: str,
    keyring: Keyring | None = None,
) -> list[ProviderRoute]:
    """The providers to try for a tenant's channel, in order.

    The inbox: its built-in route, in both modes. Other channels in mode "test": the
    sandbox, always (test keys never reach a real provider). mode "live": the enabled
    configs of the channel by priority (lowest first; oldest first on ties).
    A config whose credentials cannot be opened (its key was removed from
    HERALD_ENCRYPTION_KEYS) is logged and left out rather than failing the whole channel.
    """
    if channel == "inbox":
        return [INBOX_ROUTE]
    if mode == "test":
        return [sandbox_route(channel)]
    if mode != "live":
        raise ValueError(f"mode must be live or test, not {mode!r}")
    ring = keyring or crypto.default_keyring()
    configs = await session.scalars(
        select(ProviderConfig)
        .where(
            ProviderConfig.tenant_id == tenant_id,
            ProviderConfig.channel == channel,
            ProviderConfig.enabled.is_(True),
        )
        .order_by(ProviderConfig.priority, ProviderConfig.id)
    )
    routes = []
    for config in configs:
        try:
            credentials = open_credentials(config, ring)
        except DecryptionError as error:
            log.error(
                "provider credentials cannot be opened", config_id=str(config.id), error=str(error)
            )
            continue
        routes.append(route_for(config, credentials))
    return routes


def route_for(config: ProviderConfig, credentials: dict[str, Any]) -> ProviderRoute:
    """The route of one config, given its opened credentials."""
    return ProviderRoute(
        config_id=config.id,
        provider=config.provider,
        channel=config.channel,
        priority=config.priority,
        rate_per_second=config.rate_per_second,
        burst=config.burst,
        credentials=credentials,
        options=dict(config.options),
    )


def build_adapter(
    route: ProviderRoute, *, http: httpx.AsyncClient, settings: Settings
) -> ProviderAdapter:
    """A ready adapter for the route. `http` should come from `app.providers.http.new_client`
    (HTTP/2 enabled: APNs requires it); endpoints follow HERALD_PROVIDER_BASE_URLS."""
    return adapters.build(
        route.provider,
        route.channel,
        route.credentials,
        route.options,
        http=http,
        settings=settings,
    )
