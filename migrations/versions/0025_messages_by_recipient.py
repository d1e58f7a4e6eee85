"""messages of one recipient, newest first: the recipient page and erasure find them by index

Revision ID: 0025_messages_by_recipient
Revises: 0024_webhook_delivery_retention
Create Date: 2026-12-05 09:30:00
"""

from __future__ import annotations

from alembic import op

revision = "0025_messages_by_recipient"
down_revision = "0024_webhook_delivery_retention"
branch_labels = None
depends_on = None

# Without it, a recipient's latest messages (the dashboard's recipient page) and erasure's
# "every message of theirs" read all of the tenant's messages. Recipient ids are unique
# across modes, so the mode is checked on the rows found.
INDEX = "ix_messages_tenant_id_recipient_id_id"


def upgrade() -> None:
    op.create_index(INDEX, "messages", ["tenant_id", "recipient_id", "id"])


def downgrade() -> None:
    op.drop_index(INDEX, table_name="messages")
