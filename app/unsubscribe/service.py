"""What the public unsubscribe pages change: one recipient's switches, named by a token.

A verified token (app/unsubscribe/tokens.py) is the whole authority: it names the tenant,
the mode, the recipient and the category. Every query here is scoped by all of them, so a
genuine token of one tenant or mode never reaches another's recipient, and a recipient
erased or deleted since the mail was sent is simply not found.

`unsubscribe` switches the category's e-mail off: what RFC 8058's one-click POST does. The
preference centre shows the tenant's non-critical categories (critical ones are sent
despite opt-outs, so a switch for them would promise what Herald does not do) by the
channels a person receives, and saves them all at once. Each change is written to the
audit log; a request that changes nothing writes nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy import Select, func, literal, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit import service as audit
from app.categories.service import get_category, list_categories
from app.db import utcnow
from app.recipients.models import Preference, Recipient
from app.recipients.preferences import get_preferences, set_preferences
from app.unsubscribe.tokens import TokenClaims
from app.webhooks import events

# The channels a person reads (a webhook goes to the tenant's systems, not to a person).
CENTRE_CHANNELS = ("email", "sms", "push", "inbox")
# A preference centre shows at most this many categories, by key (one update's limit).
MAX_CENTRE_CATEGORIES = 100


@dataclass(frozen=True)
class CentreCategory:
    key: str
    name: str
    description: str
    switches: dict[str, bool]  # channel → whether it is on for this category


@dataclass(frozen=True)
class PreferenceCentre:
    """What a recipient's pages show: the token's category, and every switch they may set."""

    category: str  # the token's category key
    category_name: str
    categories: list[CentreCategory]
    # Channels the recipient switched off for every category: not switchable per category.
    channels_off: list[str]


def _actor(claims: TokenClaims) -> str:
    # No address: the audit log outlives an erasure, and the id says who.
    return f"recipient:{claims.recipient_id}"


def _recipient(claims: TokenClaims) -> Select[uuid.UUID]:
    return select(Recipient.id).where(
        Recipient.id == claims.recipient_id,
        Recipient.tenant_id == claims.tenant_id,
        Recipient.mode == claims.mode,
        Recipient.erased_at.is_(None),
    )


async def exists(session: AsyncSession, claims: TokenClaims) -> bool:
    """Whether the token's recipient is still there, in the token's tenant and mode."""
    return await session.scalar(_recipient(claims)) is not None


async def category_name(session: AsyncSession, claims: TokenClaims) -> str:
    """The token's category as people read it; its key when it was deleted since."""
    named = await get_category(
        session, tenant_id=claims.tenant_id, mode=claims.mode, key=claims.category
    )
    return named.name if named else claims.category


async def unsubscribe(session: AsyncSession, claims: TokenClaims, *, via: str) -> bool:
    """Switch the token's category off for e-mail; True when it was not off already.

    One statement: the switch is inserted off, or turned off, only for the recipient the
    token names in its tenant and mode, and a row comes back only when something changed,
    so that two clicks at once audit one change. `via` says how ("one_click", "page").
    """
    rows = _recipient(claims).with_only_columns(
        Recipient.tenant_id,
        Recipient.id,
        literal(claims.category),
        literal("email"),
        literal(False),
    )
    statement = pg_insert(Preference).from_select(
        ["tenant_id", "recipient_id", "category", "channel", "enabled"], rows
    )
    changed = await session.scalar(
        statement.on_conflict_do_update(
            index_elements=["recipient_id", "category", "channel"],
            set_={"enabled": False, "updated_at": func.now()},
            where=Preference.enabled.is_(True),
        ).returning(Preference.recipient_id)
    )
    if changed is None:
        return False
    await audit.append(
        session,
        tenant_id=claims.tenant_id,
        actor=_actor(claims),
        action="recipient.unsubscribed",
        target=str(claims.recipient_id),
        details={"category": claims.category, "channel": "email", "mode": claims.mode, "via": via},
    )
    # The tenant's endpoints hear of it, in the same transaction as the change.
    await events.record_recipients(
        session,
        [
            events.RecipientEvent(
                claims.recipient_id,
                "recipient.unsubscribed",
                {"channel": "email", "category": claims.category, "source": via},
            )
        ],
        utcnow(),
    )
    return True


async def preference_centre(session: AsyncSession, claims: TokenClaims) -> PreferenceCentre | None:
    """The recipient's switches as the preference centre shows them; None when the
    recipient is gone."""
    if not await exists(session, claims):
        return None
    scope = {"tenant_id": claims.tenant_id}
    stored = await get_preferences(session, recipient_id=claims.recipient_id, **scope)
    records = await list_categories(session, mode=claims.mode, **scope)
    shown = [record for record in records if not record.critical][:MAX_CENTRE_CATEGORIES]
    categories = [
        CentreCategory(
            key=record.key,
            name=record.name,
            description=record.description,
            switches={
                # Sent only when neither the category's switch nor the all-categories
                # one is off (app/recipients/planning.py).
                channel: stored.channels[channel]
                and stored.categories.get(record.key, {}).get(channel, True)
                for channel in CENTRE_CHANNELS
            },
        )
        for record in shown
    ]
    return PreferenceCentre(
        category=claims.category,
        category_name=await category_name(session, claims),
        categories=categories,
        channels_off=[channel for channel in CENTRE_CHANNELS if not stored.channels[channel]],
    )


async def save_preferences(
    session: AsyncSession, claims: TokenClaims, *, enabled: Collection[tuple[str, str]]
) -> PreferenceCentre | None:
    """Set every switch the centre shows: on when (category, channel) is in `enabled`, off
    otherwise; pairs it does not show are ignored. None when the recipient is gone.

    Only switches that differ from what the centre showed are written (and audited, by
    set_preferences), so saving an unchanged form changes nothing.
    """
    centre = await preference_centre(session, claims)
    if centre is None:
        return None
    wanted = set(enabled)
    changes: dict[str, dict[str, bool]] = {}
    for category in centre.categories:
        for channel, was_on in category.switches.items():
            if channel in centre.channels_off:
                continue  # off for every category: a per-category switch would not send
            on = (category.key, channel) in wanted
            if on != was_on:
                changes.setdefault(category.key, {})[channel] = on
    if not changes:
        return centre
    await set_preferences(
        session,
        tenant_id=claims.tenant_id,
        recipient_id=claims.recipient_id,
        channels={},
        categories=changes,
        actor=_actor(claims),
    )
    return await preference_centre(session, claims)
