"""audit log entries record the key of their HMAC; new entries must have one

Revision ID: 0009_audit_hmac
Revises: 0008_modes
Create Date: 2026-12-08 08:00:00

Existing entries keep their plain SHA-256 chain and get no key id: they cannot be re-signed
here (the key is not in the database, and the table is append-only) and need not be, since
`herald migrate` then seals each chain with a keyed entry whose MAC covers the last of them
(app/audit/service.py). The CHECK constraint is added NOT VALID: PostgreSQL enforces it on
every row written from now on without requiring it of the rows already there, so a process
of the previous version cannot append an unkeyed entry after a keyed one.

Provider credential fingerprints are recomputed as keyed digests by `herald migrate` and
`herald keys rotate-encryption` (they need the encryption keys, which migrations do not have).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_audit_hmac"
down_revision = "0008_modes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("audit_log", sa.Column("key_id", sa.String(length=64), nullable=True))
    op.execute(
        "ALTER TABLE audit_log ADD CONSTRAINT ck_audit_log_keyed "
        "CHECK (key_id IS NOT NULL) NOT VALID"
    )


def downgrade() -> None:
    # Keyed entries stay, with their MACs: the previous version's verify reports them as
    # not matching its SHA-256 chain.
    op.execute("ALTER TABLE audit_log DROP CONSTRAINT ck_audit_log_keyed")
    op.drop_column("audit_log", "key_id")
