"""providers: provider_configs with sealed credentials

Revision ID: 0004_providers
Revises: 0001
Create Date: 2026-11-22 02:10:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004_providers"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "provider_configs",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("provider", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("rate_per_second", sa.Float(), nullable=False),
        sa.Column("burst", sa.Integer(), nullable=False),
        sa.Column("credentials_ciphertext", sa.LargeBinary(), nullable=False),
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("fingerprint", sa.String(length=16), nullable=False),
        sa.Column("options", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("enabled", sa.Boolean(), server_default="true", nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "channel IN ('email', 'sms', 'push', 'webhook', 'inbox')",
            name=op.f("ck_provider_configs_channel"),
        ),
        sa.CheckConstraint(
            "provider IN ('smtp', 'sendgrid', 'mailgun', 'twilio', 'fcm', 'apns', 'webhook', "
            "'sandbox')",
            name=op.f("ck_provider_configs_provider"),
        ),
        sa.CheckConstraint(
            "rate_per_second > 0 AND burst >= 1", name=op.f("ck_provider_configs_rate")
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_provider_configs_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_provider_configs")),
    )
    op.create_index(
        "ix_provider_configs_tenant_id_id", "provider_configs", ["tenant_id", "id"], unique=False
    )
    op.create_index(
        "ix_provider_configs_tenant_id_channel_priority",
        "provider_configs",
        ["tenant_id", "channel", "priority"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_provider_configs_tenant_id_channel_priority", table_name="provider_configs")
    op.drop_index("ix_provider_configs_tenant_id_id", table_name="provider_configs")
    op.drop_table("provider_configs")
