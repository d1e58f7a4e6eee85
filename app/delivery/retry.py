"""When to try a failed message again: exponential backoff with full jitter, fitted to the
tenant's retry policy.

The k-th retry waits a random time below a ceiling of BASE_DELAY · growth^(k-1). The growth
is chosen per policy so that the ceilings of all its retries add up to WINDOW_SHARE of its
window (the rest is headroom for the attempts' own time), but never above MAX_GROWTH: the
default 8 attempts in 24 h get ceilings of 5 s, 24 s, 2 min, 9.5 min, 46 min, 3.7 h and 18 h,
so a provider outage of minutes or hours is outlasted; 20 attempts in 1 h stay close
together; 3 attempts in 24 h retry within 5 s and 25 s rather than leave a day between two.
However the draws fall, the last attempt is due within the window. Full jitter (a uniform
draw from MIN_DELAY to the ceiling) spreads a burst of failures apart.

The policy itself (RetryPolicy: how many attempts, within how long) is defined here with its
bounds; a tenant stores its own (tenants.retry_policy, set through
app/tenants/delivery_controls.py) and delivery reads it with `RetryPolicy.of`, which takes
the defaults for anything absent or unusable in the stored JSON.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from typing import Any

BASE_DELAY = 5.0  # the first retry's ceiling, in seconds
MIN_DELAY = 1.0  # never hammer a provider that just failed
WINDOW_SHARE = 0.95
MAX_GROWTH = 5.0  # a wait is at most this many times the one before

MAX_ATTEMPTS_RANGE = (1, 20)
WINDOW_HOURS_RANGE = (1.0, 72.0)


class RetryPolicyInvalid(ValueError):
    """A policy member is out of its bounds; `field` names it as the API does."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 8  # 1..20 attempts in all, the first included
    window_hours: float = 24.0  # 1..72: no attempt later than creation (or replay) + this

    @classmethod
    def of(cls, stored: Mapping[str, Any]) -> RetryPolicy:
        """The policy stored as JSON; an absent, mistyped or out-of-range member is defaulted."""
        if not isinstance(stored, Mapping):  # None, or JSON that is not an object
            stored = {}
        attempts: Any = stored.get("max_attempts")
        hours: Any = stored.get("window_hours")
        policy = cls()
        if not _in_range(attempts, MAX_ATTEMPTS_RANGE, integral=True):
            attempts = policy.max_attempts
        if not _in_range(hours, WINDOW_HOURS_RANGE, integral=False):
            hours = policy.window_hours
        return cls(max_attempts=int(attempts), window_hours=float(hours))

    @property
    def window(self) -> timedelta:
        return timedelta(hours=self.window_hours)

    def check(self) -> None:
        """Raise RetryPolicyInvalid naming the first member out of range."""
        if not _in_range(self.max_attempts, MAX_ATTEMPTS_RANGE, integral=True):
            low, high = MAX_ATTEMPTS_RANGE
            raise RetryPolicyInvalid("max_attempts", f"an integer from {low} to {high}")
        if not _in_range(self.window_hours, WINDOW_HOURS_RANGE, integral=False):
            low_h, high_h = WINDOW_HOURS_RANGE
            raise RetryPolicyInvalid("window_hours", f"a number from {low_h:g} to {high_h:g}")


def _in_range(value: Any, bounds: tuple[float, float], *, integral: bool) -> bool:
    # bool is an int to Python, never a count or a duration to us.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if integral and not isinstance(value, int):
        return False
    return math.isfinite(value) and bounds[0] <= value <= bounds[1]


@lru_cache(maxsize=256)
def growth(max_attempts: int, window_seconds: float) -> float:
    """The factor between retry ceilings whose sum over the policy's retries is its window
    (at most MAX_GROWTH)."""
    retries = max_attempts - 1
    if retries < 2 or BASE_DELAY * retries >= window_seconds:
        return 1.0

    def total(factor: float) -> float:
        return BASE_DELAY * (factor**retries - 1) / (factor - 1)

    low, high = 1.0 + 1e-9, MAX_GROWTH
    if total(high) <= window_seconds:
        return MAX_GROWTH
    for _ in range(100):  # bisection: total() rises with the factor
        middle = (low + high) / 2
        low, high = (middle, high) if total(middle) < window_seconds else (low, middle)
    return low


def ceiling(retry: int, policy: RetryPolicy) -> float:
    """The longest wait before the `retry`-th retry (counted from 1)."""
    factor = growth(policy.max_attempts, policy.window.total_seconds() * WINDOW_SHARE)
    return BASE_DELAY * factor ** (retry - 1)


def retry_delay(retry: int, policy: RetryPolicy, retry_after: float | None = None) -> float:
    """Seconds to wait before the `retry`-th retry; a provider's Retry-After is a floor."""
    delay = random.uniform(MIN_DELAY, max(MIN_DELAY, ceiling(retry, policy)))
    return max(delay, retry_after or 0.0)
