"""topics and their members: groups of a tenant's recipients, per mode

Revision ID: 0012_topics
Revises: 0011_account_security
Create Date: 2026-12-12 08:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012_topics"
down_revision = "0011_account_security"
branch_labels = None
depends_on = None

MODES = "mode IN ('live', 'test')"


def _timestamp(name: str) -> sa.Column[object]:
    return sa.Column(
        name, sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
    )


def upgrade() -> None:
    op.create_table(
        "topics",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("mode", sa.String(length=8), nullable=False),
        sa.Column("key", sa.String(length=100), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("description", sa.Text(), server_default="", nullable=False),
        sa.Column("member_count", sa.Integer(), server_default=sa.text("0"), nullable=False),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        sa.CheckConstraint(MODES, name="ck_topics_mode"),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name="fk_topics_tenant_id_tenants", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("tenant_id", "mode", "key", name="pk_topics"),
    )
    op.create_table(
        "topic_members",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("mode", sa.String(length=8), nullable=False),
        sa.Column("topic_key", sa.String(length=100), nullable=False),
        sa.Column("recipient_id", sa.Uuid(), nullable=False),
        _timestamp("created_at"),
        sa.CheckConstraint(MODES, name="ck_topic_members_mode"),
        sa.ForeignKeyConstraint(
            ["tenant_id", "mode", "topic_key"],
            ["topics.tenant_id", "topics.mode", "topics.key"],
            name="fk_topic_members_topic",
            ondelete="CASCADE",
        ),
        # recipients (tenant_id, id) is unique: a member is always of the topic's tenant.
        sa.ForeignKeyConstraint(
            ["tenant_id", "recipient_id"],
            ["recipients.tenant_id", "recipients.id"],
            name="fk_topic_members_recipient",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "tenant_id", "mode", "topic_key", "recipient_id", name="pk_topic_members"
        ),
    )
    # For erasure, and for the cascade when a recipient row goes.
    op.create_index(
        "ix_topic_members_tenant_id_recipient_id", "topic_members", ["tenant_id", "recipient_id"]
    )


def downgrade() -> None:
    op.drop_index("ix_topic_members_tenant_id_recipient_id", table_name="topic_members")
    op.drop_table("topic_members")
    op.drop_table("topics")
