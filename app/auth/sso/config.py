"""A tenant's single sign-on settings: stored with the client secret sealed, read back without.

Owners alone change them (`manage_sso`, app/auth/roles.py), and every change is audited. The
secret is sealed with AES-GCM under the project's keyring (app/crypto.py), bound to the
tenant by its associated data, and never returned by anything a page can call: a page learns
only that one is stored. The issuer is checked as every outbound URL a tenant names is
(app/auth/sso/transport.py). Each e-mail domain belongs to one tenant at most: the domain is
what picks the provider when someone types their address on the sign-in page.

Domains are not proven (no DNS record is asked for): a tenant could claim a domain it does not
own, so that its people's typed addresses lead to its provider. Such a provider can still sign
people into that tenant only, and nobody into another one.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import httpx
from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit import service as audit
from app.auth import roles
from app.auth.sso.models import JOIN_ROLES, SsoConfig, SsoDomain
from app.auth.sso.transport import HostNotFound, ProviderUnreachable, check_url
from app.crypto import Keyring
from app.db import utcnow

MAX_ISSUER_LENGTH = 500
MAX_CLIENT_ID_LENGTH = 255
MAX_SECRET_LENGTH = 2000
MAX_DOMAINS = 20
MAX_DOMAIN_LENGTH = 253
_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_DOMAIN = re.compile(rf"{_LABEL}(\.{_LABEL})+")


class InvalidSsoConfig(ValueError):
    """A setting that cannot be stored as given; `field` names the form field at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class SsoInput:
    """The settings as an owner sends them; a secret of None keeps the stored one."""

    issuer: str
    client_id: str
    client_secret: str | None
    domains: tuple[str, ...]
    require_sso: bool = False
    default_role: str = "viewer"


@dataclass(frozen=True)
class SsoSettings:
    """The settings as pages see them: everything but the secret."""

    issuer: str
    client_id: str
    domains: tuple[str, ...]
    require_sso: bool
    default_role: str
    updated_at: datetime
    updated_by: str
    has_secret: bool = True


def associated_data(tenant_id: uuid.UUID) -> bytes:
    return f"herald:sso_configs:{tenant_id}".encode()


def open_secret(config: SsoConfig, keyring: Keyring) -> str:
    """The client secret (DecryptionError when it cannot be opened); for the token request only."""
    return keyring.decrypt(
        config.key_id, config.secret_ciphertext, associated_data=associated_data(config.tenant_id)
    ).decode()


def normalise_issuer(value: str) -> str:
    """The issuer as typed, trimmed (it must equal the tokens' `iss` exactly), if well formed."""
    issuer = value.strip()
    if not issuer or len(issuer) > MAX_ISSUER_LENGTH:
        raise InvalidSsoConfig("issuer", f"an issuer URL of 1 to {MAX_ISSUER_LENGTH} characters")
    try:
        url = httpx.URL(issuer)
    except httpx.InvalidURL:
        raise InvalidSsoConfig("issuer", "not a valid URL") from None
    if url.scheme not in ("https", "http") or not url.host:
        raise InvalidSsoConfig("issuer", "an https:// URL, such as https://login.example.com")
    if url.query or url.fragment or url.userinfo or any(c.isspace() or c == "\x00" for c in issuer):
        raise InvalidSsoConfig("issuer", "no query, fragment, credentials or spaces")
    return issuer


def normalise_domains(values: Iterable[str]) -> tuple[str, ...]:
    """Lower-case, de-duplicated domains, each a valid host name with a dot."""
    domains: list[str] = []
    for raw in values:
        domain = raw.strip().lower().lstrip("@").rstrip(".")
        if not domain:
            continue
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            raise InvalidSsoConfig("domains", f"{raw[:100]!r} is not a domain") from None
        if len(domain) > MAX_DOMAIN_LENGTH or not _DOMAIN.fullmatch(domain):
            raise InvalidSsoConfig("domains", f"{raw[:100]!r} is not a domain such as acme.com")
        if domain not in domains:
            domains.append(domain)
    if len(domains) > MAX_DOMAINS:
        raise InvalidSsoConfig("domains", f"at most {MAX_DOMAINS} domains")
    return tuple(domains)


def split_domains(text: str) -> list[str]:
    """Domains as typed in one field: separated by commas, spaces or lines."""
    return [part for part in re.split(r"[\s,;]+", text) if part]


def _check(data: SsoInput) -> SsoInput:
    client_id = data.client_id.strip()
    if not client_id or len(client_id) > MAX_CLIENT_ID_LENGTH or "\x00" in client_id:
        raise InvalidSsoConfig(
            "client_id", f"a client ID of 1 to {MAX_CLIENT_ID_LENGTH} characters"
        )
    secret = data.client_secret
    if secret is not None and (not secret or len(secret) > MAX_SECRET_LENGTH or "\x00" in secret):
        raise InvalidSsoConfig(
            "client_secret", f"a client secret of 1 to {MAX_SECRET_LENGTH} characters"
        )
    if data.default_role not in JOIN_ROLES:
        raise InvalidSsoConfig("default_role", f"one of {', '.join(JOIN_ROLES)}")
    domains = normalise_domains(data.domains)
    return SsoInput(
        issuer=normalise_issuer(data.issuer),
        client_id=client_id,
        client_secret=secret,
        domains=domains,
        require_sso=data.require_sso,
        default_role=data.default_role,
    )


async def get_config(session: AsyncSession, *, tenant_id: uuid.UUID) -> SsoConfig | None:
    return await session.get(SsoConfig, tenant_id)


async def domains_of(session: AsyncSession, *, tenant_id: uuid.UUID) -> tuple[str, ...]:
    # ix_sso_domains_tenant_id; at most MAX_DOMAINS rows.
    rows = await session.scalars(
        select(SsoDomain.domain).where(SsoDomain.tenant_id == tenant_id).order_by(SsoDomain.domain)
    )
    return tuple(rows)


async def get_settings(
    session: AsyncSession, *, tenant_id: uuid.UUID, role: str | None = None
) -> SsoSettings | None:
    """The tenant's settings without the secret; None when single sign-on is not set up."""
    roles.require(role, "manage_sso")
    config = await get_config(session, tenant_id=tenant_id)
    if config is None:
        return None
    return SsoSettings(
        issuer=config.issuer,
        client_id=config.client_id,
        domains=await domains_of(session, tenant_id=tenant_id),
        require_sso=config.require_sso,
        default_role=config.default_role,
        updated_at=config.updated_at,
        updated_by=config.updated_by,
    )


async def save(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    data: SsoInput,
    actor: str,
    keyring: Keyring,
    allow_private: bool,
    role: str | None = None,
) -> SsoSettings:
    """Create or replace the tenant's settings, in the caller's transaction (it commits)."""
    roles.require(role, "manage_sso")
    checked = _check(data)
    try:
        await check_url(checked.issuer, allow_private=allow_private)
    except HostNotFound:
        # Perhaps not in DNS yet: every request to the provider resolves and checks it again.
        if not checked.issuer.startswith("https://"):
            raise InvalidSsoConfig("issuer", "the provider must be reached over https") from None
    except ProviderUnreachable as error:
        raise InvalidSsoConfig("issuer", str(error)) from None
    config = await session.get(SsoConfig, tenant_id, with_for_update=True)
    if config is None and checked.client_secret is None:
        raise InvalidSsoConfig("client_secret", "the client secret your provider gave you")
    if checked.domains:
        # The primary key on domain decides races; this names the taken domain first.
        taken = await session.scalar(
            select(SsoDomain.domain)
            .where(SsoDomain.domain.in_(checked.domains), SsoDomain.tenant_id != tenant_id)
            .limit(1)
        )
        if taken is not None:
            raise InvalidSsoConfig("domains", f"{taken} is used by another Herald account")
    # A savepoint: a refusal below leaves the caller's transaction (and objects) as they were.
    async with session.begin_nested():
        config = await _write(session, config, tenant_id, checked, actor, keyring)
    await audit.append(
        session,
        tenant_id=tenant_id,
        actor=actor,
        action="sso.configured",
        target=checked.issuer,
        details={
            "client_id": checked.client_id,
            "domains": list(checked.domains),
            "require_sso": checked.require_sso,
            "default_role": checked.default_role,
            "secret_changed": checked.client_secret is not None,
        },
    )
    settings = await get_settings(session, tenant_id=tenant_id)
    assert settings is not None
    return settings


async def remove(
    session: AsyncSession, *, tenant_id: uuid.UUID, actor: str, role: str | None = None
) -> bool:
    """Turn single sign-on off (password sign-in works again); False when it was not set up."""
    roles.require(role, "manage_sso")
    config = await session.get(SsoConfig, tenant_id, with_for_update=True)
    if config is None:
        return False
    issuer = config.issuer
    await session.delete(config)
    await session.flush()
    await audit.append(
        session, tenant_id=tenant_id, actor=actor, action="sso.removed", target=issuer
    )
    return True


async def config_for_domain(session: AsyncSession, *, domain: str) -> SsoConfig | None:
    """The provider that signs in people of `domain` (pk_sso_domains), if a tenant claims it."""
    return await session.scalar(
        select(SsoConfig)
        .join(SsoDomain, SsoDomain.tenant_id == SsoConfig.tenant_id)
        .where(SsoDomain.domain == domain.lower())
    )


async def tenants_requiring_sso(
    session: AsyncSession, *, tenant_ids: Iterable[uuid.UUID]
) -> set[uuid.UUID]:
    """Which of these tenants refuse password sign-in to members who are not owners."""
    wanted = list(tenant_ids)
    if not wanted:
        return set()
    rows = await session.scalars(
        select(SsoConfig.tenant_id).where(
            SsoConfig.tenant_id.in_(wanted), SsoConfig.require_sso.is_(True)
        )
    )
    return set(rows)


async def _write(
    session: AsyncSession,
    config: SsoConfig | None,
    tenant_id: uuid.UUID,
    checked: SsoInput,
    actor: str,
    keyring: Keyring,
) -> SsoConfig:
    now = utcnow()
    if config is None:
        config = SsoConfig(tenant_id=tenant_id, created_at=now)
        session.add(config)
    config.issuer = checked.issuer
    config.client_id = checked.client_id
    config.require_sso = checked.require_sso
    config.default_role = checked.default_role
    config.updated_at = now
    config.updated_by = actor
    if checked.client_secret is not None:
        config.key_id, config.secret_ciphertext = keyring.encrypt(
            checked.client_secret.encode(), associated_data=associated_data(tenant_id)
        )
    await session.flush()
    await session.execute(
        delete(SsoDomain).where(
            SsoDomain.tenant_id == tenant_id, SsoDomain.domain.not_in(checked.domains)
        )
    )
    if checked.domains:
        await session.execute(
            insert(SsoDomain)
            .values([{"domain": d, "tenant_id": tenant_id} for d in checked.domains])
            .on_conflict_do_nothing(index_elements=["domain"])
        )
        mine = await domains_of(session, tenant_id=tenant_id)
        if set(mine) != set(checked.domains):  # another tenant took one since the check
            missing = sorted(set(checked.domains) - set(mine))
            raise InvalidSsoConfig("domains", f"{missing[0]} is used by another Herald account")
    return config
