"""Retry delays: exponential ceiling, full jitter above a floor, Retry-After as a minimum."""

from __future__ import annotations

from app.delivery.retry import BASE_DELAY, MAX_DELAY, MIN_DELAY, retry_delay


def test_delays_stay_within_the_exponential_ceiling() -> None:
    for attempt in range(1, 9):
        ceiling = min(MAX_DELAY, BASE_DELAY * 2 ** (attempt - 1))
        delays = [retry_delay(attempt) for _ in range(500)]
        assert all(MIN_DELAY <= d <= ceiling for d in delays)
        # Jitter spreads them: not all the same.
        assert max(delays) - min(delays) > (ceiling - MIN_DELAY) / 2


def test_retry_after_is_a_floor() -> None:
    assert all(retry_delay(1, retry_after=30) >= 30 for _ in range(100))
    assert retry_delay(8, retry_after=None) <= MAX_DELAY
