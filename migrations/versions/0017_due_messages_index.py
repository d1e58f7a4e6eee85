"""ix_messages_due holds only messages that can be due: not held ones, not claimed ones

Revision ID: 0017_due_messages_index
Revises: 0016_audience_expansion
Create Date: 2026-12-05 01:15:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017_due_messages_index"
down_revision = "0016_audience_expansion"
branch_labels = None
depends_on = None

# Before: every queued, retrying or sending message, held ones ('infinity') included. The
# claim (`status IN ('queued', 'retrying')`), a window's count and the release of held
# messages all implied that predicate, so the planner could read this index for them: with
# statistics behind a table that grew by a million rows in a minute (or autovacuum off) it
# took it for small, and each of those statements then read every entry it had, live or dead.
# Now only the sweeper's statements, which say `next_attempt_at < 'infinity'` or
# `next_attempt_at IS NULL`, can use it; the others have their own index (the primary key,
# ix_messages_held, the notification's unique key). Held and claimed messages are no longer
# written to it, which is one index write less for each message of a broadcast and each claim.
DUE = (
    "status IN ('queued', 'retrying') AND (next_attempt_at IS NULL OR next_attempt_at < 'infinity')"
)
BEFORE = "status IN ('queued', 'retrying', 'sending')"


def upgrade() -> None:
    op.drop_index("ix_messages_due", table_name="messages")
    op.create_index(
        "ix_messages_due", "messages", ["next_attempt_at"], postgresql_where=sa.text(DUE)
    )


def downgrade() -> None:
    op.drop_index("ix_messages_due", table_name="messages")
    op.create_index(
        "ix_messages_due", "messages", ["next_attempt_at"], postgresql_where=sa.text(BEFORE)
    )
