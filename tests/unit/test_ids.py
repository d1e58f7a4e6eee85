"""UUIDv7 ids sort by creation time, which keyset pagination relies on."""

from __future__ import annotations

import pickle
import time
import uuid

from app.ids import uuid7, uuid7s


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


def test_uuid7s_are_distinct_ascending_uuids_of_one_moment() -> None:
    before = uuid7()
    time.sleep(0.002)
    many = uuid7s(1_000)
    time.sleep(0.002)
    after = uuid7()
    assert len(set(many)) == 1_000 and many == sorted(many)
    assert before < many[0] and many[-1] < after
    assert {value.int >> 80 for value in many} == {many[0].int >> 80}
    assert all(v.version == 7 and v.variant == "specified in RFC 4122" for v in many)
    # Real UUIDs: equal to, and hashed as, the same value parsed from its text.
    assert {uuid.UUID(str(value)) for value in many} == set(many)
    assert pickle.loads(pickle.dumps(many[0])) == many[0]  # noqa: S301 (our own bytes)
    assert uuid7s(0) == []
