"""dashboard account security: session generations, e-mail verification, tenants awaiting it;
the per-account lock-out columns give way to delays kept in Redis

Revision ID: 0011_account_security
Revises: 0010_dispatch_failures
Create Date: 2026-12-10 08:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011_account_security"
down_revision = "0010_dispatch_failures"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "users",
        sa.Column("session_generation", sa.Integer(), server_default="0", nullable=False),
    )
    op.add_column("users", sa.Column("email_verified_at", sa.DateTime(timezone=True)))
    op.drop_column("users", "failed_sign_ins")
    op.drop_column("users", "locked_until")
    op.create_table(
        "email_verifications",
        sa.Column("token_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name="fk_email_verifications_user_id_users",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("token_hash", name="pk_email_verifications"),
    )
    op.create_index("ix_email_verifications_user_id", "email_verifications", ["user_id"])
    # Tenants that exist already were made before verification existed: none is held.
    op.create_table(
        "unverified_tenants",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name="fk_unverified_tenants_tenant_id_tenants",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", name="pk_unverified_tenants"),
    )


def downgrade() -> None:
    op.drop_table("unverified_tenants")
    op.drop_index("ix_email_verifications_user_id", table_name="email_verifications")
    op.drop_table("email_verifications")
    op.add_column("users", sa.Column("locked_until", sa.DateTime(timezone=True)))
    op.add_column(
        "users", sa.Column("failed_sign_ins", sa.Integer(), server_default="0", nullable=False)
    )
    op.drop_column("users", "email_verified_at")
    op.drop_column("users", "session_generation")
