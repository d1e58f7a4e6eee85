"""Retry delays: exponential ceilings fitted to the policy's window, full jitter above a floor,
Retry-After as a minimum."""

from __future__ import annotations

import itertools

import pytest

from app.delivery.retry import (
    BASE_DELAY,
    MAX_GROWTH,
    MIN_DELAY,
    WINDOW_SHARE,
    RetryPolicy,
    ceiling,
    retry_delay,
)

FITTED = [
    RetryPolicy(),
    RetryPolicy(max_attempts=20, window_hours=1),
    RetryPolicy(max_attempts=12, window_hours=6),
]
POLICIES = [*FITTED, RetryPolicy(max_attempts=3, window_hours=72)]


@pytest.mark.parametrize("policy", FITTED)
def test_ceilings_grow_and_fill_the_window(policy: RetryPolicy) -> None:
    ceilings = [ceiling(retry, policy) for retry in range(1, policy.max_attempts)]
    assert ceilings[0] == BASE_DELAY
    assert all(later > earlier for earlier, later in itertools.pairwise(ceilings))
    window = policy.window.total_seconds()
    assert sum(ceilings) == pytest.approx(window * WINDOW_SHARE, rel=1e-6)


def test_the_default_policy_outlasts_an_outage_of_hours() -> None:
    policy = RetryPolicy()
    ceilings = [ceiling(retry, policy) for retry in range(1, policy.max_attempts)]
    assert ceilings[1] < 60  # a blip is retried within a minute
    assert sum(ceilings[:-1]) > 3 * 3600  # the last retry can come many hours later


@pytest.mark.parametrize("policy", POLICIES)
def test_delays_stay_within_their_ceiling_and_spread(policy: RetryPolicy) -> None:
    for retry in range(1, policy.max_attempts):
        top = ceiling(retry, policy)
        delays = [retry_delay(retry, policy) for _ in range(500)]
        assert all(MIN_DELAY <= d <= top for d in delays)
        assert max(delays) - min(delays) > (top - MIN_DELAY) / 2  # full jitter, not a constant


@pytest.mark.parametrize("policy", POLICIES)
def test_the_longest_schedule_ends_inside_the_window(policy: RetryPolicy) -> None:
    longest = sum(ceiling(retry, policy) for retry in range(1, policy.max_attempts))
    assert longest < policy.window.total_seconds()


def test_few_attempts_in_a_long_window_grow_at_most_fivefold() -> None:
    policy = RetryPolicy(max_attempts=3, window_hours=72)
    assert [ceiling(retry, policy) for retry in (1, 2)] == [BASE_DELAY, BASE_DELAY * MAX_GROWTH]


def test_a_single_retry_waits_at_most_the_base() -> None:
    policy = RetryPolicy(max_attempts=2, window_hours=24)
    assert ceiling(1, policy) == BASE_DELAY


def test_retry_after_is_a_floor() -> None:
    policy = RetryPolicy()
    assert all(retry_delay(1, policy, retry_after=30) >= 30 for _ in range(100))
