"""message_rollups: a tenant's messages counted by day, channel and measure, kept by triggers.

Statement-level triggers on `messages` (migrations/versions/0025_overview_rollups.py) append
one row per (tenant, mode, day, channel, measure, bucket) that a statement changed, with the
change; compaction folds them (app/analytics/rollups.py says what each measure counts).
"""

from __future__ import annotations

import uuid
from datetime import date

from sqlalchemy import BigInteger, Boolean, Identity, Index, SmallInteger, String, text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base
from app.modes import mode_check, mode_column

# What a row counts. Flows are counted on the UTC day they happened; states (`day` NULL) are
# how many messages are in that state now.
FLOWS = ("accepted", "sent", "delivered", "failed", "dead_lettered", "latency")
STATES = ("pending", "in_dlq")
MEASURES = FLOWS + STATES


class MessageRollup(Base):
    __tablename__ = "message_rollups"
    __table_args__ = (
        mode_check(),
        # The overview's read: a tenant's rows of one mode, by day (the states' NULL too).
        Index("ix_message_rollups_tenant_id_mode_day", "tenant_id", "mode", "day"),
        # The rows compaction has not folded yet, oldest first.
        Index("ix_message_rollups_deltas", "id", postgresql_where=text("NOT folded")),
        # One folded row per key: compaction adds to it (ON CONFLICT), states' NULL day too.
        Index(
            "ux_message_rollups_folded",
            "tenant_id",
            "mode",
            "day",
            "channel",
            "measure",
            "bucket",
            unique=True,
            postgresql_where=text("folded"),
            postgresql_nulls_not_distinct=True,
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    # No foreign key: its check would lock the tenant's row on every claim and outcome.
    tenant_id: Mapped[uuid.UUID]
    mode: Mapped[str] = mode_column()
    day: Mapped[date | None]  # UTC; NULL for a state
    channel: Mapped[str] = mapped_column(String(16))
    measure: Mapped[str] = mapped_column(String(16))
    # latency: the accept→sent bucket (app/analytics/rollups.py); pending: the priority's
    # rank (0 high, 1 normal, 2 low); 0 otherwise.
    bucket: Mapped[int] = mapped_column(SmallInteger, default=0, server_default="0")
    n: Mapped[int] = mapped_column(BigInteger)
    folded: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
