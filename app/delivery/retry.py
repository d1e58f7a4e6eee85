"""When to try a failed message again: exponential backoff with full jitter."""

from __future__ import annotations

import random

MAX_ATTEMPTS = 8
BASE_DELAY = 5.0  # seconds before the second attempt, at most
MIN_DELAY = 1.0  # never hammer a provider that just failed
MAX_DELAY = 4 * 3600.0  # 5 s · 2^n capped: eight attempts span roughly 24 h at the most


def retry_delay(attempt: int, retry_after: float | None = None) -> float:
    """Seconds to wait after `attempt` failed; a provider's Retry-After is a floor."""
    ceiling = min(MAX_DELAY, BASE_DELAY * 2 ** (attempt - 1))
    delay = random.uniform(MIN_DELAY, ceiling)  # full jitter spreads a burst of failures apart
    return max(delay, retry_after or 0.0)
