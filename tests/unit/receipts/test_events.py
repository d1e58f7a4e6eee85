"""The bounds every scheme keeps: times read or fallen back, details cut and JSON-safe,
over-long ids hashed, the tolerance applied both ways."""

from __future__ import annotations

import json
import math
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from app.receipts.events import (
    MAX_DETAIL_CHARS,
    MAX_EVENT_ID_CHARS,
    detail,
    event_id,
    from_iso,
    from_unix,
    herald_id,
    stale,
)
from tests.unit.receipts import inbound

ARRIVAL = datetime(2026, 5, 6, 7, 8, 9, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1_700_000_000, datetime.fromtimestamp(1_700_000_000, UTC)),
        (1_700_000_000.5, datetime.fromtimestamp(1_700_000_000.5, UTC)),
        ("1700000000", datetime.fromtimestamp(1_700_000_000, UTC)),
        (True, ARRIVAL),
        (None, ARRIVAL),
        (-1, ARRIVAL),
        (10**30, ARRIVAL),
        (math.inf, ARRIVAL),
        (math.nan, ARRIVAL),
        ("nan", ARRIVAL),
        ("9" * 1000, ARRIVAL),
        ("yesterday", ARRIVAL),
        ([1], ARRIVAL),
    ],
)
def test_unix_times(value: object, expected: datetime) -> None:
    assert from_unix(value, ARRIVAL) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-01-02T03:04:05Z", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2026-01-02T03:04:05.123+02:00", datetime(2026, 1, 2, 1, 4, 5, 123000, tzinfo=UTC)),
        ("2026-01-02T03:04:05", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),  # no offset: UTC
        ("2026-13-02T03:04:05Z", ARRIVAL),
        ("2026-01-02T03:04:05Z" + " " * 100, ARRIVAL),
        (1_700_000_000, ARRIVAL),
        ("", ARRIVAL),
    ],
)
def test_iso_times(value: object, expected: datetime) -> None:
    moment = from_iso(value, ARRIVAL)
    assert moment == expected
    assert moment.tzinfo is not None and moment.utcoffset() == timedelta(0)


def test_details_keep_only_small_json_values() -> None:
    kept = detail(
        text="x" * 10_000,
        count=3,
        flag=False,
        ratio=0.5,
        huge=2**80,
        nan=math.nan,
        nested={"a": 1},
        listed=[1],
        missing=None,
    )
    assert kept == {"text": "x" * MAX_DETAIL_CHARS, "count": 3, "flag": False, "ratio": 0.5}
    json.dumps(kept, allow_nan=False)


def test_event_ids_stay_within_bounds_and_unique() -> None:
    assert event_id("evt_1") == "evt_1"
    assert event_id("e" * MAX_EVENT_ID_CHARS) == "e" * MAX_EVENT_ID_CHARS
    long_a, long_b = event_id("a" * 1000), event_id("a" * 999 + "b")
    assert long_a != long_b
    assert len(long_a) <= MAX_EVENT_ID_CHARS
    assert long_a == event_id("a" * 1000)  # the same event gives the same key


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (str(uuid.UUID(int=3)), uuid.UUID(int=3)),
        (uuid.UUID(int=3).hex, uuid.UUID(int=3)),
        ("not-a-uuid", None),
        (3, None),
        ("0" * 10_000, None),
        (None, None),
    ],
)
def test_herald_ids(value: object, expected: uuid.UUID | None) -> None:
    assert herald_id(value) == expected


def test_the_tolerance_applies_both_ways_and_includes_its_edge() -> None:
    arrived = inbound(b"", at=ARRIVAL)
    tolerance = timedelta(seconds=300)
    assert stale(ARRIVAL - tolerance, arrived, tolerance) is None
    assert stale(ARRIVAL + tolerance, arrived, tolerance) is None
    behind = stale(ARRIVAL - timedelta(seconds=301), arrived, tolerance)
    ahead = stale(int(ARRIVAL.timestamp()) + 301, arrived, tolerance)
    assert behind is not None and behind.verdict == "stale" and "behind" in (behind.reason or "")
    assert ahead is not None and ahead.verdict == "stale" and "ahead" in (ahead.reason or "")
