"""The events Herald sends to tenants' webhook endpoints, by type."""

from __future__ import annotations

EVENT_TYPES = (
    "message.sent",
    "message.delivered",
    "message.bounced",
    "message.complained",
    "message.failed",
    "message.opened",
    "message.clicked",
    "notification.completed",
    "recipient.unsubscribed",
    "recipient.suppressed",
)
