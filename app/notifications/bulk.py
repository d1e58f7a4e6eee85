"""Bulk writes of dispatch's rows: renders and messages, as arrays bound once per statement.

A multi-row VALUES would be compiled anew for every batch size, which costs more than the
insert itself.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

INSERT_CHUNK = 5_000  # rows per INSERT: each column is one array parameter

_INSERT_RENDERS = text(
    """
    INSERT INTO renders (id, notification_id, tenant_id, channel, locale, content)
    SELECT id, notification_id, tenant_id, channel, locale, CAST(content AS jsonb)
      FROM unnest(CAST(:id AS uuid[]), CAST(:notification_id AS uuid[]),
                  CAST(:tenant_id AS uuid[]), CAST(:channel AS text[]), CAST(:locale AS text[]),
                  CAST(:content AS text[]))
           AS r(id, notification_id, tenant_id, channel, locale, content)
    """
)
INSERT_MESSAGES = text(
    """
    INSERT INTO messages (id, notification_id, tenant_id, mode, recipient_id, channel, address,
                          render_id, status, skip_reason, error_class, last_error, created_at,
                          next_attempt_at)
    SELECT * FROM unnest(CAST(:id AS uuid[]), CAST(:notification_id AS uuid[]),
                         CAST(:tenant_id AS uuid[]), CAST(:mode AS text[]),
                         CAST(:recipient_id AS uuid[]),
                         CAST(:channel AS text[]), CAST(:address AS text[]),
                         CAST(:render_id AS uuid[]), CAST(:status AS text[]),
                         CAST(:skip_reason AS text[]), CAST(:error_class AS text[]),
                         CAST(:last_error AS text[]), CAST(:created_at AS timestamptz[]),
                         -- text: 'infinity' (held for release) has no Python datetime
                         CAST(CAST(:next_attempt_at AS text[]) AS timestamptz[]))
    ON CONFLICT DO NOTHING
    """
)
_RENDER_COLUMNS = ("id", "notification_id", "tenant_id", "channel", "locale", "content")
MESSAGE_COLUMNS = (
    "id",
    "notification_id",
    "tenant_id",
    "mode",
    "recipient_id",
    "channel",
    "address",
    "render_id",
    "status",
    "skip_reason",
    "error_class",
    "last_error",
    "created_at",
    "next_attempt_at",
)


async def insert_renders(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    rows = [{**row, "content": msgspec.json.encode(row["content"]).decode()} for row in rows]
    await insert(session, _INSERT_RENDERS, _RENDER_COLUMNS, rows)


async def insert(
    session: AsyncSession, statement: Any, columns: Sequence[str], rows: list[dict[str, Any]]
) -> None:
    for chunk in chunks(rows, INSERT_CHUNK):
        await session.execute(statement, {name: [row[name] for row in chunk] for name in columns})


def chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
