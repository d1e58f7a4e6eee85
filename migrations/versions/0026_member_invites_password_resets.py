"""member_invites (invitations to join a tenant with a role) and password_resets (mailed
links that set a new password); both keep only their token's SHA-256

Revision ID: 0026_member_invites_resets
Revises: 0025_overview_rollups
Create Date: 2026-12-05 09:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0026_member_invites_resets"  # alembic_version holds 32 characters
down_revision = "0025_overview_rollups"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "member_invites",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("token_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("invited_by", sa.String(length=200), nullable=False),
        sa.Column("delivery", sa.String(length=8), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.CheckConstraint(
            "role IN ('owner', 'admin', 'developer', 'viewer')", name=op.f("ck_member_invites_role")
        ),
        sa.CheckConstraint(
            "delivery IN ('mail', 'sandbox')", name=op.f("ck_member_invites_delivery")
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_member_invites_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_member_invites")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_member_invites_token_hash")),
    )
    op.create_index(
        "uq_member_invites_tenant_id_email_lower",
        "member_invites",
        ["tenant_id", sa.text("lower(email)")],
        unique=True,
    )
    op.create_table(
        "password_resets",
        sa.Column("token_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_password_resets_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_password_resets")),
    )
    op.create_index("ix_password_resets_user_id", "password_resets", ["user_id"])


def downgrade() -> None:
    op.drop_index("ix_password_resets_user_id", table_name="password_resets")
    op.drop_table("password_resets")
    op.drop_index("uq_member_invites_tenant_id_email_lower", table_name="member_invites")
    op.drop_table("member_invites")
