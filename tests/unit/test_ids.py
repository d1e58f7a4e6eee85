"""UUIDv7 ids sort by creation time, which keyset pagination relies on."""

from __future__ import annotations

import time

from app.ids import uuid7


def test_uuid7_has_version_and_variant() -> None:
    value = uuid7()
    assert value.version == 7
    assert value.variant == "specified in RFC 4122"


def test_uuid7_orders_by_time() -> None:
    first = uuid7()
    time.sleep(0.002)
    second = uuid7()
    assert first < second
    assert abs((first.int >> 80) - time.time_ns() // 1_000_000) < 5_000
