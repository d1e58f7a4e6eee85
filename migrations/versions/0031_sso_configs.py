"""sso_configs and sso_domains: single sign-on with a tenant's OpenID Connect provider

Revision ID: 0031_sso_configs
Revises: 0030_dashboard_list_filters
Create Date: 2026-12-05 09:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0031_sso_configs"
down_revision = "0030_dashboard_list_filters"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sso_configs",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("issuer", sa.String(500), nullable=False),
        sa.Column("client_id", sa.String(255), nullable=False),
        sa.Column("secret_ciphertext", sa.LargeBinary(), nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("require_sso", sa.Boolean(), server_default="false", nullable=False),
        sa.Column("default_role", sa.String(16), server_default="viewer", nullable=False),
        sa.Column("updated_by", sa.String(200), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.CheckConstraint(
            "default_role IN ('viewer', 'developer', 'admin')",
            name=op.f("ck_sso_configs_default_role"),
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_sso_configs_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_sso_configs")),
    )
    op.create_table(
        "sso_domains",
        sa.Column("domain", sa.String(253), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["sso_configs.tenant_id"],
            name=op.f("fk_sso_domains_tenant_id_sso_configs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("domain", name=op.f("pk_sso_domains")),
    )
    op.create_index(op.f("ix_sso_domains_tenant_id"), "sso_domains", ["tenant_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_sso_domains_tenant_id"), table_name="sso_domains")
    op.drop_table("sso_domains")
    op.drop_table("sso_configs")
