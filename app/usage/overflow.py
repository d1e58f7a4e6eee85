"""What a broadcast larger than its quota's remainder does: the tenant's choice.

A broadcast (a topic, everyone, a filter) is sized only when dispatch reads its audience. On
a plan that blocks at its quota, it is then either

- `send_partial` (the default): sent up to the quota, what the quota cannot hold skipped
  with reason `quota`, page by page (app/usage/quota.py `cut`); or
- `refuse`: counted before its first page and held whole against the quota at once; if it
  does not fit, no message is written and the notification ends `refused`
  (app/notifications/dispatch.py).

The tenant sets it (tenants.on_quota_exceeded); a notification may say otherwise for itself
(notifications.on_quota_exceeded, from `POST /v1/notifications`), which wins.
"""

from __future__ import annotations

from typing import Literal

OnQuotaExceeded = Literal["send_partial", "refuse"]
CHOICES: tuple[OnQuotaExceeded, ...] = ("send_partial", "refuse")
DEFAULT: OnQuotaExceeded = "send_partial"
# The SQL check on both columns that store a choice.
CHECK = f"on_quota_exceeded IN {CHOICES!r}"


def chosen(notification: str | None, tenant: str | None) -> OnQuotaExceeded:
    """The notification's own choice, else the tenant's, else the default."""
    for choice in (notification, tenant):
        if choice == "refuse":
            return "refuse"
        if choice == "send_partial":
            return "send_partial"
    return DEFAULT


def own(notification: str | None) -> OnQuotaExceeded | None:
    """A notification's own choice as stored; None when it made none."""
    return None if notification is None else chosen(notification, None)
