"""How many held messages of a broadcast one release makes due (app/notifications/expansion.py)."""

from __future__ import annotations

from app.delivery import outbox
from app.notifications.expansion import MAX_WINDOW, MIN_TICK, tick, window_after


def test_a_tick_is_a_batch_at_the_rate_and_a_window_never_more_than_the_most() -> None:
    assert tick(50) == (outbox.BATCH_SIZE, outbox.BATCH_SIZE / 50)  # 2 s for a free plan
    assert tick(1_000) == (100, 0.1)
    assert tick(20_000) == (MAX_WINDOW, MIN_TICK)  # at most ten windows a second


def test_a_release_held_up_keeps_the_pace_up_to_the_most_a_window_holds() -> None:
    assert window_after(1_000, 0.1) == 100  # on time: the tick's window
    assert window_after(1_000, 0.02) == 100  # early: still a whole one
    assert window_after(1_000, 0.35) == 350  # held up by a page: what the rate allowed since
    assert window_after(1_000, 30.0) == MAX_WINDOW  # never a burst beyond one window
    assert window_after(50, 3.0) == 150  # a free plan's two-second tick, a second late
