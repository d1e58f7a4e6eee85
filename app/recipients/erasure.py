"""Erasure: a recipient's personal data removed from every table, delivery counts kept.

One transaction, and the same few bulk statements however long the recipient's history:
- the recipient row is emptied and renamed `erased:<id>`; it stays, messages refer to it;
- notifications waiting for dispatch stop naming them. This comes first, before the
  recipient row is locked: its row locks wait for a dispatch in progress, whose messages
  the next statements then see, and that dispatch never waits for a lock of ours (it would
  deadlock). A dispatch that starts later reads the recipient with a key-share lock, so it
  waits for the erasure and finds nobody under the old id;
- every message of theirs: the address becomes `erased:<message id>` and error texts are
  replaced; the ones not sent yet (queued, retrying), held by a worker (sending) or in the
  dead-letter queue (failed) become `cancelled` with skip_reason `erased`; status, channel,
  provider and timestamps stay, so counts and analytics still add up;
- their attempts keep provider, outcome, status code and timings, not error texts;
- their receipt events keep kind and time, not what the provider said (message_events);
- renders that only their messages use (per-recipient content, or a notification to them
  alone) are emptied, and so is the data of a notification addressed to them alone;
- suppressions of their addresses become keyed digests that still match (suppressions.py);
- their preferences are deleted, per category and per topic;
- they leave every topic, each topic's member_count going down by one (topics.py);
- the audit log records the erasure (ids and counts).

A message a worker is sending cannot be recalled: the provider may still deliver it. Taking
its claim back (cancelled) means the worker's outcome, give-back or retry and the sweeper no
longer apply to it; what that worker records all the same (its attempt, a bounce's
suppression) is redacted on the way in: see `erased_messages`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from sqlalchemy import Text, cast, delete, func, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit import service as audit
from app.auth import roles
from app.channels import CHANNELS
from app.crypto import Keyring
from app.recipients import lookups
from app.recipients.models import Preference, Recipient, TopicPreference
from app.recipients.planning import addresses
from app.recipients.suppressions import hide_addresses
from app.recipients.topics import leave_topics
from app.recipients.validation import ERASED_PREFIX

ERASED = "erased"  # the skip_reason of the messages erasure cancels
ERASED_TEXT = "[erased with the recipient]"  # stands in for error texts, which may quote them

# Every message that could still be sent (now, later, or by a DLQ replay) is cancelled. `old`
# holds the addresses before the update, for the suppressions; locking in id order keeps two
# writers of the same rows from deadlocking. A claim that comes later finds the message
# cancelled; one that came first made it `sending`, which is taken back here.
_MESSAGES = text(
    """
    UPDATE messages AS m
       SET address = :prefix || CAST(m.id AS text),
           last_error = CASE WHEN m.last_error IS NULL THEN NULL ELSE :erased_text END,
           status = CASE WHEN m.status IN ('queued', 'retrying', 'sending', 'failed')
                         THEN 'cancelled' ELSE m.status END,
           skip_reason = CASE WHEN m.status IN ('queued', 'retrying', 'sending', 'failed')
                              THEN :erased ELSE m.skip_reason END,
           next_attempt_at = CASE WHEN m.status IN ('queued', 'retrying', 'sending', 'failed')
                                  THEN NULL ELSE m.next_attempt_at END,
           claimed_until = NULL, updated_at = now()
      FROM (SELECT id, channel, address FROM messages
             WHERE tenant_id = :tenant_id AND recipient_id = :recipient_id
             ORDER BY id FOR UPDATE) AS old
     WHERE m.id = old.id AND m.tenant_id = :tenant_id
    RETURNING m.id, m.notification_id, m.render_id, old.channel, old.address,
              m.skip_reason IS NOT DISTINCT FROM :erased AS cancelled
    """
)
_ATTEMPTS = text(
    """
    UPDATE attempts SET error = :erased_text
     WHERE tenant_id = :tenant_id AND message_id = ANY(CAST(:ids AS uuid[]))
       AND error IS NOT NULL
    """
)
# What providers reported about their messages may quote the address (a bounce's SMTP reply):
# the timeline keeps each event's kind and time, not its detail. The receipts' raw bodies
# go with their retention.
_RECEIPT_EVENTS = text(
    """
    UPDATE message_events SET detail = jsonb_build_object('erased', true)
     WHERE message_id = ANY(CAST(:ids AS uuid[])) AND tenant_id = :tenant_id
    """
)
# Emptied, not deleted: a deleted render would make PostgreSQL look for the messages that
# refer to it, and messages.render_id has no index (the send path pays for every index).
_RENDERS = text(
    """
    UPDATE renders AS r SET content = jsonb_build_object('channel', r.channel, 'erased', true)
     WHERE r.tenant_id = :tenant_id AND r.id = ANY(CAST(:ids AS uuid[]))
       AND NOT EXISTS (SELECT 1 FROM messages AS o
                        WHERE o.tenant_id = :tenant_id AND o.notification_id = r.notification_id
                          AND o.render_id = r.id AND o.recipient_id <> :recipient_id)
    """
)
# The recipient's id in an audience becomes their erased id; a notification addressed to
# them alone loses its data too (what the tenant sent about them). Rewritten: the ones given
# and those still waiting for dispatch (few, and found through ix_notifications_pending).
_NOTIFICATIONS = text(
    """
    UPDATE notifications AS n
       SET audience = jsonb_set(n.audience, '{recipients}', (
               SELECT jsonb_agg(CASE WHEN e.value = to_jsonb(CAST(:external_id AS text))
                                     THEN to_jsonb(CAST(:erased_id AS text)) ELSE e.value END
                                ORDER BY e.n)
                 FROM jsonb_array_elements(n.audience -> 'recipients') WITH ORDINALITY
                      AS e(value, n))),
           data = CASE WHEN n.audience -> 'recipients'
                            = jsonb_build_array(CAST(:external_id AS text))
                       THEN '{}'::jsonb ELSE n.data END
      FROM (SELECT id FROM notifications
             WHERE :pending AND status = 'accepted' AND tenant_id = :tenant_id AND mode = :mode
            UNION SELECT unnest(CAST(:ids AS uuid[]))) AS w
     WHERE n.id = w.id AND n.tenant_id = :tenant_id AND n.mode = :mode
       AND n.audience -> 'recipients' @> jsonb_build_array(CAST(:external_id AS text))
    """
)
_ERASED_AMONG = text(
    """
    SELECT m.id FROM messages AS m
      JOIN unnest(CAST(:tenant_ids AS uuid[]), CAST(:ids AS uuid[])) AS w(tenant_id, id)
        ON m.tenant_id = w.tenant_id AND m.id = w.id
     WHERE m.skip_reason = :erased
    """
)


async def erase_recipient(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    mode: str,
    external_id: str,
    actor: str,
    keyring: Keyring | None = None,
    role: str | None = None,
) -> Recipient | None:
    """Erase the recipient of that mode everywhere, in the caller's transaction.

    `role`: the acting member's (app/auth/roles.py); None for an API key."""
    roles.require(role, "erase_recipients")
    # Through the unique key alone (lookups.py): erasure is checked on the row found.
    named = lookups.one(tenant_id=tenant_id, mode=mode, external_id=external_id)
    found = (
        await session.execute(named.with_only_columns(Recipient.id, Recipient.erased_at))
    ).first()
    if found is None or found.erased_at is not None:
        return None
    recipient_id = found.id
    scope = {
        "tenant_id": tenant_id,
        "mode": mode,
        "external_id": external_id,
        "erased_id": f"{ERASED_PREFIX}{recipient_id}",
    }
    # Before any lock of the recipient (see the module's docstring).
    await session.execute(_NOTIFICATIONS, {**scope, "ids": [], "pending": True})
    recipient = await session.scalar(named.with_for_update())
    # Erased meanwhile by a concurrent call: its external id was replaced, or it is marked.
    if recipient is None or recipient.erased_at is not None:
        return None
    known = [(channel, a) for channel in CHANNELS for a in addresses(recipient, channel)]
    erased = await _empty_recipient(session, tenant_id, recipient.id)
    messages = (
        await session.execute(
            _MESSAGES,
            {
                "tenant_id": tenant_id,
                "recipient_id": erased.id,
                "prefix": ERASED_PREFIX,
                "erased": ERASED,
                "erased_text": ERASED_TEXT,
            },
        )
    ).all()
    message_ids = [m.id for m in messages]
    await session.execute(
        _ATTEMPTS, {"tenant_id": tenant_id, "ids": message_ids, "erased_text": ERASED_TEXT}
    )
    await session.execute(_RECEIPT_EVENTS, {"tenant_id": tenant_id, "ids": message_ids})
    notification_ids = sorted({m.notification_id for m in messages})
    await session.execute(_NOTIFICATIONS, {**scope, "ids": notification_ids, "pending": False})
    render_ids = sorted({m.render_id for m in messages if m.render_id is not None})
    await session.execute(
        _RENDERS, {"tenant_id": tenant_id, "recipient_id": erased.id, "ids": render_ids}
    )
    await hide_addresses(
        session,
        tenant_id=tenant_id,
        mode=mode,
        addresses=known + [(m.channel, m.address) for m in messages],
        keyring=keyring,
    )
    # Opt-outs are about the person too; the suppressions above keep protecting them. The
    # recipient row stays, so its foreign keys' cascades do not act: each table is emptied.
    for table in (Preference, TopicPreference):
        await session.execute(
            delete(table).where(table.tenant_id == tenant_id, table.recipient_id == erased.id)
        )
    # Memberships name the person to the tenant's audiences; a count stays with each topic.
    topics = await leave_topics(session, tenant_id=tenant_id, mode=mode, recipient_id=erased.id)
    await audit.append(
        session,
        tenant_id=tenant_id,
        actor=actor,
        action="recipient.erased",
        target=str(erased.id),
        details={
            "messages": len(messages),
            "cancelled": sum(m.cancelled for m in messages),
            "topics": topics,
            "mode": mode,
        },
    )
    return erased


async def _empty_recipient(
    session: AsyncSession, tenant_id: uuid.UUID, recipient_id: uuid.UUID
) -> Recipient:
    """Empty every personal field and free the external id (the row is locked by the caller)."""
    erased = await session.scalars(
        update(Recipient)
        .where(Recipient.tenant_id == tenant_id, Recipient.id == recipient_id)
        .values(
            external_id=func.concat(ERASED_PREFIX, cast(Recipient.id, Text)),
            email=None,
            phone=None,
            push_tokens=[],
            webhook_url=None,
            locale=None,
            timezone=None,
            data={},
            erased_at=func.now(),
            updated_at=func.now(),
        )
        .returning(Recipient),
        execution_options={"populate_existing": True},
    )
    return erased.one()


async def erased_messages(
    session: AsyncSession, messages: Iterable[tuple[uuid.UUID, uuid.UUID]]
) -> set[uuid.UUID]:
    """Of these (tenant id, message id) pairs, the messages erasure has cancelled."""
    pairs = list(messages)
    if not pairs:
        return set()
    rows = await session.scalars(
        _ERASED_AMONG,
        {"tenant_ids": [t for t, _ in pairs], "ids": [m for _, m in pairs], "erased": ERASED},
    )
    return set(rows)
