"""Planning deliveries: for each recipient x channel, the address to use or why to skip.

Two queries at most, whatever the number of recipients: their preferences (skipped for a
category that ignores opt-outs) and the suppressions among their addresses. What a
category's being critical changes is app/categories/rules.py's: critical ones ignore
opt-outs, never suppressions (a hard-bounced or complaining address stays unreachable), and
a tenant's `drop_noncritical` kill switch on a channel skips that channel for every other
category (`pause` holds messages at delivery, not here).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from sqlalchemy import ARRAY, Uuid, any_, bindparam, select, union
from sqlalchemy.ext.asyncio import AsyncSession

from app.categories.rules import rules_for
from app.categories.service import CategoryView
from app.channels import CHANNELS
from app.recipients.models import Preference, Recipient, TopicPreference
from app.recipients.preferences import ALL_CATEGORIES
from app.recipients.suppressions import suppressed
from app.recipients.validation import suppression_key

NO_ADDRESS = "no_address"
OPTED_OUT = "opted_out"
SUPPRESSED = "suppressed"
KILL_SWITCH = "kill_switch"
DROP_NONCRITICAL = "drop_noncritical"  # the kill-switch mode that acts at dispatch
NO_SWITCHES: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True)
class PlannedDelivery:
    recipient_id: uuid.UUID
    channel: str
    address: str  # "" when the recipient has none for the channel
    # None: deliver; else kill_switch | no_address | opted_out | suppressed
    skip_reason: str | None


def addresses(recipient: Recipient, channel: str) -> list[str]:
    """The recipient's addresses on a channel; push has one per device token."""
    if recipient.erased_at is not None:
        return []
    if channel == "push":
        return [f"{t['provider']}:{t['token']}" for t in recipient.push_tokens]
    value = {
        "email": recipient.email,
        "sms": recipient.phone,
        "webhook": recipient.webhook_url,
        "inbox": recipient.external_id,
    }[channel]
    return [value] if value else []


async def _opted_out(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    recipient_ids: list[uuid.UUID],
    channels: list[str],
    category: str,
    topic: str | None,
) -> set[tuple[uuid.UUID, str]]:
    """(recipient, channel) switched off for every category or for this one, or for the
    topic the notification is sent to."""
    ids = bindparam("ids", recipient_ids, type_=ARRAY(Uuid))
    query = select(Preference.recipient_id, Preference.channel).where(
        Preference.tenant_id == tenant_id,
        Preference.recipient_id == any_(ids),
        Preference.category.in_([ALL_CATEGORIES, category]),
        Preference.channel.in_(channels),
        Preference.enabled.is_(False),
    )
    if topic is not None:
        by_topic = select(TopicPreference.recipient_id, TopicPreference.channel).where(
            TopicPreference.recipient_id == any_(ids),
            TopicPreference.topic_key == topic,
            TopicPreference.channel.in_(channels),
            TopicPreference.enabled.is_(False),
        )
        query = union(query, by_topic)  # type: ignore[assignment]
    rows = await session.execute(query)
    return {(recipient_id, channel) for recipient_id, channel in rows}


async def plan_deliveries(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    mode: str,
    recipients: list[Recipient],
    channels: list[str],
    category: CategoryView,
    kill_switches: Mapping[str, str] = NO_SWITCHES,
    topic: str | None = None,
) -> list[PlannedDelivery]:
    """One PlannedDelivery per recipient x channel x address, in that order.

    `recipients` are of `mode`, whose suppressions apply. `kill_switches` is the tenant's
    {channel: switch}; critical categories ignore them. `topic`: the notification is sent to
    that topic, whose preferences apply as the category's do.
    """
    unknown = [channel for channel in channels if channel not in CHANNELS]
    if unknown:
        raise ValueError(f"unknown channels: {', '.join(unknown)}")
    if not recipients or not channels:
        return []
    candidates = [
        (recipient, channel, address)
        for recipient in recipients
        for channel in dict.fromkeys(channels)
        for address in addresses(recipient, channel) or [""]
    ]
    rules = rules_for(category.critical)
    dropped: set[str] = set()
    if not rules.ignores_drop_noncritical:
        dropped = {c for c in channels if kill_switches.get(c) == DROP_NONCRITICAL}
    flowing = [channel for channel in dict.fromkeys(channels) if channel not in dropped]
    opted_out: set[tuple[uuid.UUID, str]] = set()
    if not rules.ignores_opt_outs and flowing:
        ids = list({recipient.id for recipient in recipients})
        opted_out = await _opted_out(session, tenant_id, ids, flowing, category.key, topic)
    wanted = {
        (c, suppression_key(c, address)) for _, c, address in candidates if address and c in flowing
    }
    blocked = await suppressed(session, tenant_id=tenant_id, mode=mode, pairs=wanted)

    def skip_reason(recipient: Recipient, channel: str, address: str) -> str | None:
        # The tenant's switch comes first: it is why nothing went out on the channel.
        if channel in dropped:
            return KILL_SWITCH
        if not address:
            return NO_ADDRESS
        if (recipient.id, channel) in opted_out:
            return OPTED_OUT
        if (channel, suppression_key(channel, address)) in blocked:
            return SUPPRESSED
        return None

    return [
        PlannedDelivery(recipient.id, channel, address, skip_reason(recipient, channel, address))
        for recipient, channel, address in candidates
    ]
