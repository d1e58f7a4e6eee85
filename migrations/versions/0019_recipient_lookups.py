"""a recipient looked up by external id is found through the unique key, whatever the statistics

Revision ID: 0019_recipient_lookups
Revises: 0018_message_references
Create Date: 2026-12-05 05:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0019_recipient_lookups"
down_revision = "0018_message_references"
branch_labels = None
depends_on = None

# Every index of `recipients` but the primary key starts with (tenant_id, mode). Without
# statistics (a tenant's import newer than the last ANALYZE, or autovacuum off), the planner
# takes (tenant_id, mode) for a handful of rows, then prefers whichever such index is
# smallest and filters external_id: a dispatch's lookup of 1,000 ids compared each against
# all of the tenant's recipients, 19 s for a tenant of 100,000. Each index other than the
# unique key now leaves out rows that a lookup by external id does not exclude (such lookups
# never say `erased_at IS NULL`, app/recipients/lookups.py), so the unique key is the only
# index that can serve one. What each served still implies its predicate: a search by
# e-mail or phone names one, and listings and audience pages skip erased recipients.
INDEXES = (
    ("ix_recipients_tenant_id_mode_id", ["tenant_id", "mode", "id"], "erased_at IS NULL"),
    (
        "ix_recipients_tenant_id_mode_email",
        ["tenant_id", "mode", sa.text("lower(email)")],
        "email IS NOT NULL",
    ),
    ("ix_recipients_tenant_id_mode_phone", ["tenant_id", "mode", "phone"], "phone IS NOT NULL"),
)


def upgrade() -> None:
    for name, columns, predicate in INDEXES:
        op.drop_index(name, table_name="recipients")
        op.create_index(name, "recipients", columns, postgresql_where=sa.text(predicate))


def downgrade() -> None:
    for name, columns, _ in INDEXES:
        op.drop_index(name, table_name="recipients")
        op.create_index(name, "recipients", columns)
