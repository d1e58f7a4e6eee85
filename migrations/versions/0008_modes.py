"""live and test mode on every object a send reads or changes; per-key rate limits; inbox
token revocation

Rows that exist already were made by live and test keys alike, which could not be told
apart: they become live objects, except messages, which take their notification's mode.
Idempotency-Keys become unique per (tenant, mode).

A downgrade deletes test-mode data (test objects may share keys with live ones, which the
older unique constraints cannot hold); live data is kept.

Revision ID: 0008_modes
Revises: 0007_budgets_locales_traces
Create Date: 2026-12-04 15:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_modes"
down_revision = "0007_budgets_locales_traces"
branch_labels = None
depends_on = None

MODES = ("live", "test")
SCOPED = ("recipients", "categories", "templates", "suppressions", "messages")


def _add_mode(table: str) -> None:
    op.add_column(table, sa.Column("mode", sa.String(length=8), nullable=True))


def _require_mode(table: str) -> None:
    op.alter_column(table, "mode", nullable=False)
    op.create_check_constraint(op.f(f"ck_{table}_mode"), table, f"mode IN {MODES!r}")


def upgrade() -> None:
    for table in SCOPED:
        _add_mode(table)
    for table in ("recipients", "categories", "templates", "suppressions"):
        op.execute(f"UPDATE {table} SET mode = 'live'")  # noqa: S608 (a constant name)
    op.execute(
        "UPDATE messages AS m SET mode = n.mode FROM notifications AS n"
        " WHERE n.id = m.notification_id"
    )
    for table in SCOPED:
        _require_mode(table)
    op.create_check_constraint(op.f("ck_notifications_mode"), "notifications", f"mode IN {MODES!r}")

    # recipients
    op.drop_constraint("uq_recipients_tenant_id_external_id", "recipients", type_="unique")
    op.create_unique_constraint(
        "uq_recipients_tenant_id_mode_external_id",
        "recipients",
        ["tenant_id", "mode", "external_id"],
    )
    op.drop_index("ix_recipients_tenant_id_email", table_name="recipients")
    op.drop_index("ix_recipients_tenant_id_phone", table_name="recipients")
    op.create_index(
        "ix_recipients_tenant_id_mode_email",
        "recipients",
        ["tenant_id", "mode", sa.literal_column("lower(email)")],
    )
    op.create_index(
        "ix_recipients_tenant_id_mode_phone", "recipients", ["tenant_id", "mode", "phone"]
    )
    op.create_index("ix_recipients_tenant_id_mode_id", "recipients", ["tenant_id", "mode", "id"])
    op.add_column(
        "recipients",
        sa.Column("inbox_tokens_valid_after", sa.DateTime(timezone=True), nullable=True),
    )

    # categories
    op.drop_constraint("pk_categories", "categories", type_="primary")
    op.create_primary_key("pk_categories", "categories", ["tenant_id", "mode", "key"])

    # templates
    op.drop_constraint("uq_templates_tenant_id_key_version", "templates", type_="unique")
    op.create_unique_constraint(
        "uq_templates_tenant_id_mode_key_version",
        "templates",
        ["tenant_id", "mode", "key", "version"],
    )
    op.drop_index("ix_templates_tenant_id_id", table_name="templates")
    op.create_index("ix_templates_tenant_id_mode_id", "templates", ["tenant_id", "mode", "id"])

    # suppressions
    op.drop_constraint("uq_suppressions_tenant_id_channel_address", "suppressions", type_="unique")
    op.create_unique_constraint(
        "uq_suppressions_tenant_id_mode_channel_address",
        "suppressions",
        ["tenant_id", "mode", "channel", "address"],
    )
    op.drop_index("ix_suppressions_tenant_id_id", table_name="suppressions")
    op.create_index(
        "ix_suppressions_tenant_id_mode_id", "suppressions", ["tenant_id", "mode", "id"]
    )

    # notifications and messages
    op.drop_constraint(
        "uq_notifications_tenant_id_idempotency_key", "notifications", type_="unique"
    )
    op.create_unique_constraint(
        "uq_notifications_tenant_id_mode_idempotency_key",
        "notifications",
        ["tenant_id", "mode", "idempotency_key"],
    )
    op.drop_index("ix_notifications_tenant_id_id", table_name="notifications")
    op.create_index(
        "ix_notifications_tenant_id_mode_id", "notifications", ["tenant_id", "mode", "id"]
    )
    op.drop_index("ix_messages_tenant_id_id", table_name="messages")
    op.create_index("ix_messages_tenant_id_mode_id", "messages", ["tenant_id", "mode", "id"])
    op.drop_index("ix_messages_failed", table_name="messages")
    op.create_index(
        "ix_messages_failed",
        "messages",
        ["tenant_id", "mode", "id"],
        postgresql_where=sa.text("status = 'failed'"),
    )

    # api keys: mode-scoped listing and a limit of their own
    op.drop_index("ix_api_keys_tenant_id_id", table_name="api_keys")
    op.create_index("ix_api_keys_tenant_id_mode_id", "api_keys", ["tenant_id", "mode", "id"])
    op.add_column("api_keys", sa.Column("rate_per_second", sa.Float(), nullable=True))
    op.add_column("api_keys", sa.Column("burst", sa.Integer(), nullable=True))
    op.create_check_constraint(
        op.f("ck_api_keys_rate"),
        "api_keys",
        "(rate_per_second IS NULL) = (burst IS NULL) AND rate_per_second > 0 AND burst >= 1",
    )


def downgrade() -> None:
    op.drop_constraint(op.f("ck_api_keys_rate"), "api_keys", type_="check")
    op.drop_column("api_keys", "burst")
    op.drop_column("api_keys", "rate_per_second")
    op.drop_index("ix_api_keys_tenant_id_mode_id", table_name="api_keys")
    op.create_index("ix_api_keys_tenant_id_id", "api_keys", ["tenant_id", "id"])

    # Test data cannot live beside live data under the older constraints: it goes.
    op.execute("DELETE FROM notifications WHERE mode = 'test'")
    for table in ("suppressions", "templates", "categories", "recipients"):
        op.execute(f"DELETE FROM {table} WHERE mode = 'test'")  # noqa: S608 (a constant name)

    op.drop_index("ix_messages_failed", table_name="messages")
    op.create_index(
        "ix_messages_failed",
        "messages",
        ["tenant_id", "id"],
        postgresql_where=sa.text("status = 'failed'"),
    )
    op.drop_index("ix_messages_tenant_id_mode_id", table_name="messages")
    op.create_index("ix_messages_tenant_id_id", "messages", ["tenant_id", "id"])
    op.drop_index("ix_notifications_tenant_id_mode_id", table_name="notifications")
    op.create_index("ix_notifications_tenant_id_id", "notifications", ["tenant_id", "id"])
    op.drop_constraint(
        "uq_notifications_tenant_id_mode_idempotency_key", "notifications", type_="unique"
    )
    op.create_unique_constraint(
        "uq_notifications_tenant_id_idempotency_key",
        "notifications",
        ["tenant_id", "idempotency_key"],
    )

    op.drop_index("ix_suppressions_tenant_id_mode_id", table_name="suppressions")
    op.create_index("ix_suppressions_tenant_id_id", "suppressions", ["tenant_id", "id"])
    op.drop_constraint(
        "uq_suppressions_tenant_id_mode_channel_address", "suppressions", type_="unique"
    )
    op.create_unique_constraint(
        "uq_suppressions_tenant_id_channel_address",
        "suppressions",
        ["tenant_id", "channel", "address"],
    )

    op.drop_index("ix_templates_tenant_id_mode_id", table_name="templates")
    op.create_index("ix_templates_tenant_id_id", "templates", ["tenant_id", "id"])
    op.drop_constraint("uq_templates_tenant_id_mode_key_version", "templates", type_="unique")
    op.create_unique_constraint(
        "uq_templates_tenant_id_key_version", "templates", ["tenant_id", "key", "version"]
    )

    op.drop_constraint("pk_categories", "categories", type_="primary")
    op.create_primary_key("pk_categories", "categories", ["tenant_id", "key"])

    op.drop_column("recipients", "inbox_tokens_valid_after")
    op.drop_index("ix_recipients_tenant_id_mode_id", table_name="recipients")
    op.drop_index("ix_recipients_tenant_id_mode_phone", table_name="recipients")
    op.drop_index("ix_recipients_tenant_id_mode_email", table_name="recipients")
    op.create_index("ix_recipients_tenant_id_phone", "recipients", ["tenant_id", "phone"])
    op.create_index(
        "ix_recipients_tenant_id_email",
        "recipients",
        ["tenant_id", sa.literal_column("lower(email)")],
    )
    op.drop_constraint("uq_recipients_tenant_id_mode_external_id", "recipients", type_="unique")
    op.create_unique_constraint(
        "uq_recipients_tenant_id_external_id", "recipients", ["tenant_id", "external_id"]
    )

    op.drop_constraint(op.f("ck_notifications_mode"), "notifications", type_="check")
    for table in SCOPED:
        op.drop_constraint(op.f(f"ck_{table}_mode"), table, type_="check")
        op.drop_column(table, "mode")
