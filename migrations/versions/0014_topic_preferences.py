"""topic preferences: a recipient's channel switches for the notifications sent to a topic

Revision ID: 0014_topic_preferences
Revises: 0013_paused_notifications
Create Date: 2026-12-15 08:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014_topic_preferences"
down_revision = "0013_paused_notifications"
branch_labels = None
depends_on = None

CHANNELS = "('email', 'sms', 'push', 'webhook', 'inbox')"


def upgrade() -> None:
    op.create_table(
        "topic_preferences",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("recipient_id", sa.Uuid(), nullable=False),
        sa.Column("topic_key", sa.String(length=100), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(f"channel IN {CHANNELS}", name="ck_topic_preferences_channel"),
        # Through (tenant_id, id), as preferences: never another tenant's recipient. No key
        # to topics: a switch may name a topic not joined or not created yet.
        sa.ForeignKeyConstraint(
            ["tenant_id", "recipient_id"],
            ["recipients.tenant_id", "recipients.id"],
            name="fk_topic_preferences_recipient",
            ondelete="CASCADE",
        ),
        # Leads with recipient_id: it serves the cascade and erasure as well as lookups.
        sa.PrimaryKeyConstraint(
            "recipient_id", "topic_key", "channel", name="pk_topic_preferences"
        ),
    )


def downgrade() -> None:
    op.drop_table("topic_preferences")
