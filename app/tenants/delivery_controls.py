"""A tenant's delivery controls: kill switches per channel, the retry policy, the default
locale, and what a broadcast larger than the quota left does.

These are the tenant's own settings, stored on its row; what they mean to messages belongs
to delivery: the retry policy's bounds and schedule to app/delivery/retry.py, what a kill
switch does to messages already written to app/delivery/held.py.

Kill switches (tenants.kill_switches, {channel: mode}; a channel absent from it flows):
- `pause`: dispatch still writes the channel's messages (`queued`); the delivery claim
  leaves them alone until the pause is lifted, when the caller releases them
  (`app.delivery.held.release`).
- `drop_noncritical`: the channel's messages of non-critical categories already waiting
  become `skipped` when it is set (`app.delivery.held.drop_waiting_noncritical`), dispatch
  writes later ones so, and the delivery claim skips any that comes back after a send under
  way; critical categories still flow.

The retry policy (tenants.retry_policy) is checked against its bounds when it is set and
read by delivery through `RetryPolicy.of`.

The default locale (tenants.default_locale, a normalised tag or null) is the locale of
recipients who have none, and the last fallback before a template's own content.

What a broadcast larger than a blocking plan's quota left does (tenants.on_quota_exceeded,
`send_partial` or `refuse`) is read by dispatch when it sizes the audience
(app/usage/overflow.py); a notification's own choice wins over it.

Each change is one UPDATE of the tenant row (`||`, `-`, a whole-value SET), so changes
racing on different channels all stick, and is audited in the caller's transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal, cast

from sqlalchemy import String, bindparam, select, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit import service as audit
from app.auth import roles
from app.channels import CHANNELS
from app.delivery.held import drop_waiting_noncritical
from app.delivery.retry import RetryPolicy, RetryPolicyInvalid
from app.recipients.validation import RecipientInvalid, normalise_locale
from app.tenants.models import Tenant
from app.usage import overflow
from app.usage.overflow import OnQuotaExceeded

KillSwitch = Literal["pause", "drop_noncritical"]
KILL_SWITCHES: tuple[KillSwitch, ...] = ("pause", "drop_noncritical")


class SettingInvalid(ValueError):
    """A setting is refused; `field` names it as the API does."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class TenantNotFound(LookupError):
    """The tenant row is gone (deleted between authentication and now)."""


@dataclass(frozen=True)
class ResumeWork:
    """A kill-switch change, and whether it lifted a pause (held messages must be released)."""

    tenant_id: uuid.UUID
    channel: str
    previous: KillSwitch | None
    mode: KillSwitch | None
    switches: dict[str, KillSwitch]  # every switch of the tenant after the change
    dropped: int = 0  # waiting non-critical messages skipped by a drop_noncritical

    @property
    def resumes(self) -> bool:
        return self.previous == "pause" and self.mode != "pause"


def switches_of(stored: Mapping[str, Any] | None) -> dict[str, KillSwitch]:
    """The stored map, keeping only known channels and modes (by channel order)."""
    if not isinstance(stored, Mapping):
        stored = {}
    return {
        channel: cast(KillSwitch, stored[channel])
        for channel in CHANNELS
        if stored.get(channel) in KILL_SWITCHES
    }


async def get_kill_switches(
    session: AsyncSession, *, tenant_id: uuid.UUID
) -> dict[str, KillSwitch]:
    """{channel: mode} for the channels switched; one query. Empty for an unknown tenant."""
    stored = await session.scalar(select(Tenant.kill_switches).where(Tenant.id == tenant_id))
    return switches_of(stored)


@dataclass(frozen=True)
class DeliverySettings:
    """What dispatch (and a preview) reads of the tenant, in one query."""

    kill_switches: dict[str, KillSwitch]
    default_locale: str | None
    plan: str = "free"  # whose render budget dispatch draws on
    on_quota_exceeded: OnQuotaExceeded = overflow.DEFAULT  # a broadcast larger than the quota


async def get_delivery_settings(session: AsyncSession, *, tenant_id: uuid.UUID) -> DeliverySettings:
    """Kill switches, default locale, plan and quota choice; none of the first two for an
    unknown tenant."""
    row = (
        await session.execute(
            select(
                Tenant.kill_switches, Tenant.default_locale, Tenant.plan, Tenant.on_quota_exceeded
            ).where(Tenant.id == tenant_id)
        )
    ).first()
    if row is None:
        return DeliverySettings({}, None)
    return DeliverySettings(switches_of(row[0]), row[1], row[2], overflow.chosen(None, row[3]))


# The CTE locks the row first, so `previous` is what this change replaces even when another
# change of the same tenant commits meanwhile; `||` / `-` then apply to the newest row.
_SET_SWITCH = """
WITH old AS (
    SELECT id, kill_switches ->> :channel AS previous FROM tenants WHERE id = :tenant_id FOR UPDATE
)
UPDATE tenants AS t SET kill_switches = {change}
  FROM old
 WHERE t.id = old.id
RETURNING old.previous, t.kill_switches
"""
_SWITCH_ON = text(
    _SET_SWITCH.format(change="t.kill_switches || jsonb_build_object(:channel, :mode)")
).bindparams(bindparam("channel", type_=String), bindparam("mode", type_=String))
_SWITCH_OFF = text(_SET_SWITCH.format(change="t.kill_switches - :channel")).bindparams(
    bindparam("channel", type_=String)
)


async def set_kill_switch(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    channel: str,
    mode: KillSwitch | None,
    actor: str,
    role: str | None = None,
) -> ResumeWork:
    """Switch one channel (None: off) in the caller's transaction; audited.

    After commit, when the result `resumes`, the caller releases the held messages
    (`app.delivery.held.release`). `role`: the acting member's (app/auth/roles.py), None
    for an API key.
    """
    roles.require(role, "manage_settings")
    if channel not in CHANNELS:
        raise SettingInvalid("channel", f"unknown channel; one of {', '.join(CHANNELS)}")
    if mode is not None and mode not in KILL_SWITCHES:
        raise SettingInvalid("mode", f"one of {', '.join(KILL_SWITCHES)}, or off")
    params: dict[str, Any] = {"tenant_id": tenant_id, "channel": channel}
    statement = _SWITCH_OFF if mode is None else _SWITCH_ON
    if mode is not None:
        params["mode"] = mode
    row = (await session.execute(statement, params)).first()
    if row is None:
        raise TenantNotFound(str(tenant_id))
    previous = cast(KillSwitch, row[0]) if row[0] in KILL_SWITCHES else None
    dropped = 0
    if mode == "drop_noncritical":
        dropped = await drop_waiting_noncritical(session, tenant_id=tenant_id, channel=channel)
    await audit.append(
        session,
        tenant_id=tenant_id,
        actor=actor,
        action="tenant.kill_switch",
        target=channel,
        details={"mode": mode or "off", "previous": previous or "off", "dropped": dropped},
    )
    return ResumeWork(tenant_id, channel, previous, mode, switches_of(row[1]), dropped)


async def get_retry_policy(session: AsyncSession, *, tenant_id: uuid.UUID) -> RetryPolicy:
    stored = await session.scalar(select(Tenant.retry_policy).where(Tenant.id == tenant_id))
    if stored is None:
        raise TenantNotFound(str(tenant_id))
    return RetryPolicy.of(stored)


_SET_POLICY = text(
    "UPDATE tenants SET retry_policy = :policy WHERE id = :tenant_id RETURNING retry_policy"
).bindparams(bindparam("policy", type_=JSONB))


async def set_retry_policy(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    policy: RetryPolicy,
    actor: str,
    role: str | None = None,
) -> RetryPolicy:
    """Replace the tenant's retry policy in the caller's transaction; audited. `role` as
    set_kill_switch's."""
    roles.require(role, "manage_settings")
    try:
        policy.check()
    except RetryPolicyInvalid as invalid:
        raise SettingInvalid(invalid.field, invalid.message) from None
    stored = await session.scalar(_SET_POLICY, {"policy": asdict(policy), "tenant_id": tenant_id})
    if stored is None:
        raise TenantNotFound(str(tenant_id))
    await audit.append(
        session,
        tenant_id=tenant_id,
        actor=actor,
        action="tenant.retry_policy",
        target=str(tenant_id),
        details=asdict(policy),
    )
    return RetryPolicy.of(stored)


def checked_locale(locale: str | None) -> str | None:
    """The tag as stored (`fr_ca` → `fr-CA`), checked as a recipient's locale is."""
    if locale is None:
        return None
    try:
        return normalise_locale(locale)
    except RecipientInvalid as invalid:
        raise SettingInvalid("default_locale", invalid.message) from None


# The CTE locks the row first, so `previous` is what this change replaces.
_SET_LOCALE = text(
    """
    WITH old AS (SELECT id, default_locale FROM tenants WHERE id = :tenant_id FOR UPDATE)
    UPDATE tenants AS t SET default_locale = :locale
      FROM old
     WHERE t.id = old.id
    RETURNING old.default_locale
    """
).bindparams(bindparam("locale", type_=String))


async def get_default_locale(session: AsyncSession, *, tenant_id: uuid.UUID) -> str | None:
    row = (
        await session.execute(select(Tenant.default_locale).where(Tenant.id == tenant_id))
    ).first()
    if row is None:
        raise TenantNotFound(str(tenant_id))
    return row[0]


async def set_default_locale(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    locale: str | None,
    actor: str,
    role: str | None = None,
) -> str | None:
    """Set (None: clear) the tenant's default locale in the caller's transaction; audited.

    Returns the tag as stored. `role` as set_kill_switch's."""
    roles.require(role, "manage_settings")
    stored = checked_locale(locale)
    row = (await session.execute(_SET_LOCALE, {"tenant_id": tenant_id, "locale": stored})).first()
    if row is None:
        raise TenantNotFound(str(tenant_id))
    await audit.append(
        session,
        tenant_id=tenant_id,
        actor=actor,
        action="tenant.default_locale",
        target=str(tenant_id),
        details={"default_locale": stored, "previous": row[0]},
    )
    return stored


async def get_on_quota_exceeded(session: AsyncSession, *, tenant_id: uuid.UUID) -> OnQuotaExceeded:
    row = (
        await session.execute(select(Tenant.on_quota_exceeded).where(Tenant.id == tenant_id))
    ).first()
    if row is None:
        raise TenantNotFound(str(tenant_id))
    return overflow.chosen(None, row[0])


# The CTE locks the row first, so `previous` is what this change replaces.
_SET_ON_QUOTA = text(
    """
    WITH old AS (SELECT id, on_quota_exceeded FROM tenants WHERE id = :tenant_id FOR UPDATE)
    UPDATE tenants AS t SET on_quota_exceeded = :choice
      FROM old
     WHERE t.id = old.id
    RETURNING old.on_quota_exceeded
    """
).bindparams(bindparam("choice", type_=String))


async def set_on_quota_exceeded(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    choice: str,
    actor: str,
    role: str | None = None,
) -> OnQuotaExceeded:
    """Set what a broadcast larger than the quota left does (`send_partial` or `refuse`) in
    the caller's transaction; audited. `role` as set_kill_switch's."""
    roles.require(role, "manage_settings")
    if choice not in overflow.CHOICES:
        raise SettingInvalid("on_quota_exceeded", f"one of {', '.join(overflow.CHOICES)}")
    row = (await session.execute(_SET_ON_QUOTA, {"tenant_id": tenant_id, "choice": choice})).first()
    if row is None:
        raise TenantNotFound(str(tenant_id))
    await audit.append(
        session,
        tenant_id=tenant_id,
        actor=actor,
        action="tenant.on_quota_exceeded",
        target=str(tenant_id),
        details={"on_quota_exceeded": choice, "previous": row[0]},
    )
    return overflow.chosen(None, choice)
