"""What a category's being critical changes for a send, in one place.

A critical category (the built-in `security`, or a tenant's with `critical: true`) is for
what cannot wait or be declined: one-time codes, password resets, sign-in alerts. Its
notifications
- ignore the recipient's opt-outs (never suppressions: a hard-bounced or complaining
  address stays unreachable), read when deliveries are planned (app/recipients/planning.py);
- are spared by a `drop_noncritical` kill switch: planning does not skip them, and
  dispatch records `notifications.critical`, which the delivery claim and the drop of
  waiting messages read in SQL (app/delivery/claims.py, app/delivery/held.py);
- may ride the `high` queue, which every tenant shares: intake refuses `priority: "high"`
  for any other category (app/notifications/intake.py).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SendRules:
    ignores_opt_outs: bool
    ignores_drop_noncritical: bool
    may_be_high_priority: bool


CRITICAL = SendRules(
    ignores_opt_outs=True, ignores_drop_noncritical=True, may_be_high_priority=True
)
ORDINARY = SendRules(
    ignores_opt_outs=False, ignores_drop_noncritical=False, may_be_high_priority=False
)


def rules_for(critical: bool) -> SendRules:
    """The rules a send of a category follows, by whether the category is critical."""
    return CRITICAL if critical else ORDINARY


def high_priority_refusal(category_key: str) -> str:
    """Why `priority: "high"` is refused for a category that is not critical."""
    return (
        f"high priority is for critical categories (such as `security`); category "
        f"{category_key!r} is not critical: send it at normal priority"
    )
