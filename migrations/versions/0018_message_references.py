"""messages name their recipient and render without a foreign key: one key check per row less

Revision ID: 0018_message_references
Revises: 0017_due_messages_index
Create Date: 2026-12-05 01:50:00
"""

from __future__ import annotations

from alembic import op

revision = "0018_message_references"
down_revision = "0017_due_messages_index"
branch_labels = None
depends_on = None

# A foreign key is checked row by row, each check a lookup that also locks the referenced
# row (FOR KEY SHARE): a broadcast's page of 5,000 messages wrote 5,000 row locks into as
# many recipients and as many into its render, a third of the page's time. Neither key
# protected anything: recipients are erased in place (never deleted) and renders go only
# with their notification, both only ever with their tenant, and a notification's messages
# go with it through notification_id, which keeps its foreign key. Dispatch writes only
# recipient and render ids it has just read.


def upgrade() -> None:
    op.drop_constraint("fk_messages_recipient_id_recipients", "messages", type_="foreignkey")
    op.drop_constraint("fk_messages_render_id_renders", "messages", type_="foreignkey")


def downgrade() -> None:
    op.create_foreign_key(
        "fk_messages_recipient_id_recipients",
        "messages",
        "recipients",
        ["recipient_id"],
        ["id"],
        ondelete="CASCADE",
    )
    op.create_foreign_key(
        "fk_messages_render_id_renders",
        "messages",
        "renders",
        ["render_id"],
        ["id"],
        ondelete="SET NULL",
    )
