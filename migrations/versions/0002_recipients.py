"""recipients, categories, preferences, suppressions

Revision ID: 0002_recipients
Revises: 0001
Create Date: 2026-11-23 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002_recipients"
down_revision = "0001"
branch_labels = None
depends_on = None

CHANNELS = "('email', 'sms', 'push', 'webhook', 'inbox')"
REASONS = (
    "('hard_bounce', 'complaint', 'unsubscribed', 'invalid_address', "
    "'unregistered_device', 'manual')"
)


def _timestamp(name: str) -> sa.Column[object]:
    return sa.Column(
        name, sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
    )


def _tenant_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["tenant_id"], ["tenants.id"], name=f"fk_{table}_tenant_id_tenants", ondelete="CASCADE"
    )


def upgrade() -> None:
    op.create_table(
        "recipients",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("external_id", sa.String(length=200), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=True),
        sa.Column("phone", sa.String(length=16), nullable=True),
        sa.Column(
            "push_tokens",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'[]'::jsonb"),
            nullable=False,
        ),
        sa.Column("webhook_url", sa.String(length=2048), nullable=True),
        sa.Column("locale", sa.String(length=35), nullable=True),
        sa.Column("timezone", sa.String(length=64), nullable=True),
        sa.Column(
            "data",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("erased_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("id", sa.Uuid(), nullable=False),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        _tenant_fk("recipients"),
        sa.PrimaryKeyConstraint("id", name="pk_recipients"),
        sa.UniqueConstraint("tenant_id", "external_id", name="uq_recipients_tenant_id_external_id"),
        sa.UniqueConstraint("tenant_id", "id", name="uq_recipients_tenant_id_id"),
    )
    op.create_index(
        "ix_recipients_tenant_id_email",
        "recipients",
        ["tenant_id", sa.literal_column("lower(email)")],
    )
    op.create_index("ix_recipients_tenant_id_phone", "recipients", ["tenant_id", "phone"])

    op.create_table(
        "categories",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("description", sa.Text(), server_default="", nullable=False),
        sa.Column("critical", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        _tenant_fk("categories"),
        sa.PrimaryKeyConstraint("tenant_id", "key", name="pk_categories"),
    )

    op.create_table(
        "preferences",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("recipient_id", sa.Uuid(), nullable=False),
        sa.Column("category", sa.String(length=64), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        _timestamp("updated_at"),
        sa.CheckConstraint(f"channel IN {CHANNELS}", name="ck_preferences_channel"),
        # Through (tenant_id, id): a preference cannot point at another tenant's recipient.
        sa.ForeignKeyConstraint(
            ["tenant_id", "recipient_id"],
            ["recipients.tenant_id", "recipients.id"],
            name="fk_preferences_recipient",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("recipient_id", "category", "channel", name="pk_preferences"),
    )

    op.create_table(
        "suppressions",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("address", sa.String(length=2048), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("source", sa.String(length=200), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        _timestamp("created_at"),
        sa.CheckConstraint(f"channel IN {CHANNELS}", name="ck_suppressions_channel"),
        sa.CheckConstraint(f"reason IN {REASONS}", name="ck_suppressions_reason"),
        _tenant_fk("suppressions"),
        sa.PrimaryKeyConstraint("id", name="pk_suppressions"),
        sa.UniqueConstraint(
            "tenant_id", "channel", "address", name="uq_suppressions_tenant_id_channel_address"
        ),
    )
    op.create_index("ix_suppressions_tenant_id_id", "suppressions", ["tenant_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_suppressions_tenant_id_id", table_name="suppressions")
    op.drop_table("suppressions")
    op.drop_table("preferences")
    op.drop_table("categories")
    op.drop_index("ix_recipients_tenant_id_phone", table_name="recipients")
    op.drop_index("ix_recipients_tenant_id_email", table_name="recipients")
    op.drop_table("recipients")
