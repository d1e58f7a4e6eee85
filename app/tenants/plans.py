"""What each plan allows per tenant, in each mode: API request and send rates, render time.

Rates are tokens per second refilled into token buckets (app/ratelimit); a burst is a
bucket's capacity, what may be spent at once after a quiet spell. Render time is in
milliseconds of the render processes' time, charged by what each render took (a render
killed at its deadline costs the deadline): a typical render takes well under 1 ms, so the
budget only binds templates that run into the 100 ms render limit, over and over.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PlanLimits:
    api_rate: float  # API requests per second, all of a tenant's keys of one mode together
    api_burst: int
    send_rate: float  # messages handed to providers per second, per tenant and mode
    send_burst: int
    render_ms_rate: float  # render milliseconds per second, per tenant and mode (all renders)
    render_ms_burst: int
    log_retention_days: int  # how long providers' receipts (and their events) are kept


PLAN_LIMITS: dict[str, PlanLimits] = {
    "free": PlanLimits(
        api_rate=25,
        api_burst=100,
        send_rate=50,
        send_burst=500,
        render_ms_rate=200,
        render_ms_burst=5_000,
        log_retention_days=7,
    ),
    "starter": PlanLimits(
        api_rate=100,
        api_burst=200,
        send_rate=200,
        send_burst=1000,
        render_ms_rate=500,
        render_ms_burst=10_000,
        log_retention_days=30,
    ),
    "growth": PlanLimits(
        api_rate=500,
        api_burst=1000,
        send_rate=1000,
        send_burst=2000,
        render_ms_rate=1_000,
        render_ms_burst=20_000,
        log_retention_days=30,
    ),
    "enterprise": PlanLimits(
        api_rate=5000,
        api_burst=10000,
        send_rate=20000,
        send_burst=20000,
        render_ms_rate=4_000,
        render_ms_burst=60_000,
        log_retention_days=90,
    ),
}


def limits_for(plan: str) -> PlanLimits:
    """The plan's limits; an unknown plan gets the free plan's, never more."""
    return PLAN_LIMITS.get(plan, PLAN_LIMITS["free"])
