"""Counting an audience: the recipients of a tenant's mode it reaches, under a time limit.

A topic's count is the one it keeps (app/recipients/topics.py); `all` and filters count
recipients.

A filter on recipients' data is a scan of the tenant's recipients (their `data` has no
index): cheap for thousands, a second or so for a million. `COUNT_TIMEOUT_MS` bounds it
with PostgreSQL's own statement timeout, which cancels the scan itself, so a tenant's
filter cannot hold a connection and a core for longer, whatever it asks; and `CountSlots`
bounds how many run at once, so that a tenant asking for many cannot take the database's
connections and cores from the others.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

from sqlalchemy import ColumnElement, func, select, text, true
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from app.audiences import filters
from app.audiences.schemas import Audience
from app.recipients.models import Recipient, TopicMember
from app.recipients.topics import get_topic

COUNT_TIMEOUT_MS = 10_000
COUNTS_PER_PROCESS = 4  # counts running at once in one API process, all tenants together


class AudienceInvalid(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class CountTimedOut(Exception):
    """Counting took longer than COUNT_TIMEOUT_MS and was cancelled."""


class CountsBusy(Exception):
    """No slot: the tenant has a count running in this process (`tenant`), or the process
    runs as many as it allows (`process`)."""

    def __init__(self, whose: str) -> None:
        super().__init__(whose)
        self.whose = whose


class CountSlots:
    """One count per tenant at a time in a process, and `total` in all (one per API process,
    shared by its requests)."""

    def __init__(self, total: int = COUNTS_PER_PROCESS) -> None:
        self.total = total
        self._tenants: set[uuid.UUID] = set()

    @contextlib.contextmanager
    def slot(self, tenant_id: uuid.UUID) -> Iterator[None]:
        """Held while a count runs; raises CountsBusy when there is none to take."""
        if tenant_id in self._tenants:
            raise CountsBusy("tenant")
        if len(self._tenants) >= self.total:
            raise CountsBusy("process")
        self._tenants.add(tenant_id)
        try:
            yield
        finally:
            self._tenants.discard(tenant_id)


def check(audience: Audience) -> None:
    """Raise AudienceInvalid unless the audience names exactly one kind and its filter is
    within bounds; `field` starts with `audience`."""
    chosen = [name for name in ("all", "topic", "filter") if getattr(audience, name) is not None]
    if len(chosen) != 1:
        raise AudienceInvalid("audience", "give exactly one of `all`, `topic` and `filter`")
    if audience.filter is not None:
        try:
            filters.check(audience.filter)
        except filters.FilterInvalid as invalid:
            where = f"audience.filter.{invalid.field}" if invalid.field else "audience.filter"
            raise AudienceInvalid(where, invalid.message) from None


def condition(audience: Audience, *, tenant_id: uuid.UUID, mode: str) -> ColumnElement[bool]:
    """The audience as a condition on `recipients` of the tenant and mode (which the caller
    selects as well: a topic's members are those of its tenant and mode only)."""
    check(audience)
    if audience.topic is not None:
        return (
            select(TopicMember.recipient_id)
            .where(
                TopicMember.tenant_id == tenant_id,
                TopicMember.mode == mode,
                TopicMember.topic_key == audience.topic,
                TopicMember.recipient_id == Recipient.id,
            )
            .exists()
        )
    if audience.filter is None:
        return true()
    return filters.compile_filter(audience.filter)


async def count(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    mode: str,
    audience: Audience,
    slots: CountSlots,
    timeout_ms: int = COUNT_TIMEOUT_MS,
) -> int:
    """How many recipients the audience reaches now; raises AudienceInvalid, CountsBusy,
    CountTimedOut."""
    matched = condition(audience, tenant_id=tenant_id, mode=mode)
    if audience.topic is not None:
        # A topic keeps its count of members as they change (erasure included): no scan.
        topic = await get_topic(session, tenant_id=tenant_id, mode=mode, key=audience.topic)
        members = None if topic is None else topic.member_count
        await session.rollback()
        if members is None:
            raise AudienceInvalid("audience.topic", f"no topic {audience.topic!r} in {mode} mode")
        return members
    query = select(func.count()).where(
        Recipient.tenant_id == tenant_id,
        Recipient.mode == mode,
        Recipient.erased_at.is_(None),
        matched,
    )
    with slots.slot(tenant_id):
        # SET LOCAL lasts until the transaction ends: the caller's session is rolled back
        # below either way, so the limit never applies to anything else.
        await session.execute(text(f"SET LOCAL statement_timeout = {int(timeout_ms)}"))
        try:
            found = int((await session.execute(query)).scalar_one())
        except DBAPIError as error:
            if getattr(error.orig, "sqlstate", None) == "57014":  # query_canceled
                await session.rollback()
                raise CountTimedOut from None
            raise
        await session.rollback()
    return found
