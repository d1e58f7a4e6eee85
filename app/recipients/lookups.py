"""Recipients found by external id, through the unique key (tenant_id, mode, external_id) alone.

Statistics on `recipients` lag a tenant's import, and where autovacuum is off there are none.
Without them the planner takes (tenant_id, mode) for a handful of rows, and every other
index of the table starts with those two columns: it took the smallest of them and compared
each recipient of the tenant against the wanted ids, 19 s for 1,000 ids among 100,000
recipients. So the statements here are written so that no plan but the unique key's is open:
- the other indexes leave out rows these statements do not exclude (migration 0019): they
  never say `erased_at IS NULL`, and check erasure on the rows found;
- a list of ids drives a LATERAL lookup, one probe of the unique key per id, so the join
  order is not the planner's to choose either.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import ARRAY, String, bindparam, func, select, true
from sqlalchemy.orm import aliased

from app.recipients.models import Recipient


def one(*, tenant_id: uuid.UUID, mode: str, external_id: str) -> Any:
    """The recipient of that external id, erased or not (the caller checks `erased_at`)."""
    return select(Recipient).where(
        Recipient.tenant_id == tenant_id,
        Recipient.mode == mode,
        Recipient.external_id == external_id,
    )


def many(*, tenant_id: uuid.UUID, mode: str, external_ids: list[str], lock: bool) -> Any:
    """The live recipients of those external ids (each id once), as Recipient entities.

    `lock`: each row found is locked as it is probed (FOR NO KEY UPDATE); a row being erased
    is waited for, and the erasure seen by the filter on the row as locked."""
    wanted = (
        func.unnest(bindparam("external_ids", external_ids, type_=ARRAY(String)))
        .table_valued("external_id")
        .render_derived(name="wanted")
    )
    probe = select(Recipient).where(
        Recipient.tenant_id == tenant_id,
        Recipient.mode == mode,
        Recipient.external_id == wanted.c.external_id,
    )
    # OFFSET 0 keeps the subquery from being flattened into a join whose order the planner
    # would choose again, and `erased_at IS NULL` from being pushed into it, where it would
    # open ix_recipients_tenant_id_mode_id to the probe.
    probe = probe.offset(0)
    if lock:
        probe = probe.with_for_update(key_share=True)
    found = probe.lateral("found")
    recipient = aliased(Recipient, found)
    return (
        select(recipient)
        .select_from(wanted)
        .join(found, true())
        .where(recipient.erased_at.is_(None))
    )
