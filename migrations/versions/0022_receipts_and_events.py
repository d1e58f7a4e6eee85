"""receipts, message_events, the webhook_events outbox, and the statuses receipts set

Messages gain the statuses only receipts set (delivered, opened, clicked, bounced,
complained, undelivered). Notifications gain completed_at; those already dispatched are
taken as completed, so that the upgrade does not announce every past notification.

Revision ID: 0022_receipts_and_events
Revises: 0021_webhook_deliveries
Create Date: 2026-12-05 06:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

SEND_STATUSES = ("queued", "sending", "sent", "retrying", "failed", "skipped", "cancelled")
RECEIPT_STATUSES = ("delivered", "opened", "clicked", "bounced", "complained", "undelivered")

revision = "0022_receipts_and_events"
down_revision = "0021_webhook_deliveries"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "receipts",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=True),
        sa.Column("mode", sa.String(length=8), nullable=True),
        sa.Column("provider_config_id", sa.Uuid(), nullable=False),
        sa.Column("provider", sa.String(length=16), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("retain_until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("verdict", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("body", sa.LargeBinary(), nullable=True),
        sa.Column("body_size", sa.Integer(), nullable=False),
        sa.Column("headers", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("event_count", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("new_events", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.CheckConstraint(
            "mode IS NULL OR mode IN ('live', 'test')", name=op.f("ck_receipts_mode")
        ),
        sa.CheckConstraint(
            "verdict IN ('verified', 'bad_signature', 'stale', 'replayed', 'unknown_config',"
            " 'unparseable')",
            name=op.f("ck_receipts_verdict"),
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_receipts_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_receipts")),
    )
    op.create_index("ix_receipts_retain_until", "receipts", ["retain_until"], unique=False)
    op.create_index(
        "ix_receipts_tenant_id_mode_id", "receipts", ["tenant_id", "mode", "id"], unique=False
    )
    op.create_table(
        "webhook_events",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("mode", sa.String(length=8), nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("ordering_key", sa.String(length=64), nullable=False),
        sa.Column("data", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("mode IN ('live', 'test')", name=op.f("ck_webhook_events_mode")),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_webhook_events_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_events")),
    )
    op.create_table(
        "message_events",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("mode", sa.String(length=8), nullable=False),
        sa.Column("provider_config_id", sa.Uuid(), nullable=False),
        sa.Column("provider_event_id", sa.String(length=200), nullable=False),
        sa.Column("receipt_id", sa.Uuid(), nullable=False),
        sa.Column("message_id", sa.Uuid(), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("detail", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("applied", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
            name=op.f("fk_message_events_message_id_messages"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["receipt_id"],
            ["receipts.id"],
            name=op.f("fk_message_events_receipt_id_receipts"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_message_events_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_message_events")),
        sa.UniqueConstraint(
            "provider_config_id",
            "provider_event_id",
            name=op.f("uq_message_events_provider_config_id_provider_event_id"),
        ),
    )
    op.create_index(
        "ix_message_events_message_id_occurred_at",
        "message_events",
        ["message_id", "occurred_at"],
        unique=False,
    )
    op.create_index("ix_message_events_receipt_id", "message_events", ["receipt_id"], unique=False)
    op.add_column(
        "notifications", sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.create_index(
        "ix_notifications_completing",
        "notifications",
        ["id"],
        unique=False,
        postgresql_where=sa.text("status = 'dispatched' AND completed_at IS NULL"),
    )
    op.add_column(
        "webhook_deliveries", sa.Column("ordering_key", sa.String(length=64), nullable=True)
    )
    op.add_column("webhook_deliveries", sa.Column("event_seq", sa.BigInteger(), nullable=True))
    op.create_index(
        "ix_webhook_deliveries_ordering",
        "webhook_deliveries",
        ["endpoint_id", "ordering_key", "event_seq"],
        unique=False,
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.add_column(
        "webhook_endpoints", sa.Column("failing_since", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column("webhook_endpoints", sa.Column("disabled_reason", sa.Text(), nullable=True))
    op.execute(
        "UPDATE notifications SET completed_at = now()"
        " WHERE status = 'dispatched' AND completed_at IS NULL"
    )
    op.drop_constraint(op.f("ck_messages_status"), "messages", type_="check")
    op.create_check_constraint(
        op.f("ck_messages_status"), "messages", f"status IN {SEND_STATUSES + RECEIPT_STATUSES!r}"
    )


def downgrade() -> None:
    # What receipts said is lost with their tables: such messages go back to sent.
    op.execute(
        "UPDATE messages SET status = 'sent'"
        " WHERE status IN ('delivered', 'opened', 'clicked', 'bounced', 'complained',"
        " 'undelivered')"
    )
    op.drop_constraint(op.f("ck_messages_status"), "messages", type_="check")
    op.create_check_constraint(
        op.f("ck_messages_status"), "messages", f"status IN {SEND_STATUSES!r}"
    )
    op.drop_column("webhook_endpoints", "disabled_reason")
    op.drop_column("webhook_endpoints", "failing_since")
    op.drop_index(
        "ix_webhook_deliveries_ordering",
        table_name="webhook_deliveries",
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.drop_column("webhook_deliveries", "event_seq")
    op.drop_column("webhook_deliveries", "ordering_key")
    op.drop_index(
        "ix_notifications_completing",
        table_name="notifications",
        postgresql_where=sa.text("status = 'dispatched' AND completed_at IS NULL"),
    )
    op.drop_column("notifications", "completed_at")
    op.drop_index("ix_message_events_receipt_id", table_name="message_events")
    op.drop_index("ix_message_events_message_id_occurred_at", table_name="message_events")
    op.drop_table("message_events")
    op.drop_table("webhook_events")
    op.drop_index("ix_receipts_tenant_id_mode_id", table_name="receipts")
    op.drop_index("ix_receipts_retain_until", table_name="receipts")
    op.drop_table("receipts")
