"""Dispatch failures: a notification whose dispatch keeps failing is failed, not retried for ever.

The outbox relay (relay.py) dispatches again any notification still `accepted` after its due
time, which is what makes a lost job harmless; it also re-dispatched for ever one whose
dispatch raised each time, or killed its worker. So each dispatch run is counted before its
work starts, in a transaction of its own (a worker SIGKILLed mid-dispatch has counted its
run), and a run that ends (dispatched, or deferred for the render budget) sets the count back
to 0 in the transaction that writes its messages. The run after MAX_DISPATCH_ATTEMPTS
unfinished ones fails the notification instead, with the last error recorded as its reason.
"""

from __future__ import annotations

import uuid

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.templates.rendering import clean_message

MAX_DISPATCH_ATTEMPTS = 5

_BEGIN = text(
    """
    UPDATE notifications SET dispatch_attempts = dispatch_attempts + 1
     WHERE id = :id AND status = 'accepted'
    RETURNING dispatch_attempts, dispatch_error
    """
)
# A broadcast failed part-way has messages held for release: due now (dispatch_after), so
# that the relay has its dispatch cancel them (app/notifications/dispatch.py).
_GIVE_UP = text(
    """
    UPDATE notifications
       SET status = 'failed',
           problems = problems || jsonb_build_object('dispatch', CAST(:reason AS text)),
           dispatch_after = CASE WHEN releasing THEN now() END
     WHERE id = :id AND status = 'accepted'
    """
)
_RECORD = text("UPDATE notifications SET dispatch_error = :error WHERE id = :id")


async def begin_attempt(session: AsyncSession, *, notification_id: uuid.UUID) -> bool:
    """Count a dispatch run of an accepted notification, and commit; False when this run
    would be one too many, in which case the notification is failed with the reason.
    (Not accepted: nothing to count, and the run goes ahead to hand back queued messages.)"""
    row = (await session.execute(_BEGIN, {"id": notification_id})).first()
    if row is None or row.dispatch_attempts <= MAX_DISPATCH_ATTEMPTS:
        await session.commit()
        return True
    last = row.dispatch_error or "the worker stopped during the dispatch (killed or crashed)"
    reason = f"dispatch failed {MAX_DISPATCH_ATTEMPTS} times; the last time: {last}"
    await session.execute(_GIVE_UP, {"id": notification_id, "reason": reason})
    await session.commit()
    return False


async def record_failure(
    session: AsyncSession, *, notification_id: uuid.UUID, error: BaseException
) -> None:
    """Keep the error of a dispatch run that raised, for the reason it may be failed with."""
    message = clean_message(f"{type(error).__name__}: {error}")
    await session.execute(_RECORD, {"id": notification_id, "error": message})
    await session.commit()
