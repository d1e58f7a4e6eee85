"""What each plan allows: API request and send rates per tenant, in each mode.

Rates are tokens per second refilled into token buckets (app/ratelimit); a burst is a
bucket's capacity, what may be spent at once after a quiet spell.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PlanLimits:
    api_rate: float  # API requests per second, all of a tenant's keys of one mode together
    api_burst: int
    send_rate: float  # messages handed to providers per second, per tenant and mode
    send_burst: int


PLAN_LIMITS: dict[str, PlanLimits] = {
    "free": PlanLimits(api_rate=25, api_burst=100, send_rate=50, send_burst=500),
    "starter": PlanLimits(api_rate=100, api_burst=200, send_rate=200, send_burst=1000),
    "growth": PlanLimits(api_rate=500, api_burst=1000, send_rate=1000, send_burst=2000),
    "enterprise": PlanLimits(api_rate=5000, api_burst=10000, send_rate=20000, send_burst=20000),
}


def limits_for(plan: str) -> PlanLimits:
    """The plan's limits; an unknown plan gets the free plan's, never more."""
    return PLAN_LIMITS.get(plan, PLAN_LIMITS["free"])
