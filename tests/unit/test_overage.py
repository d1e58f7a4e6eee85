"""What a flush takes a tenant past its quota (only on a plan billing overage), and how long a
failed report waits before its next try."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest

from app.billing.overage import Change, backoff, quantities
from app.tenants import plans

TENANT, OTHER = uuid.uuid4(), uuid.uuid4()


@pytest.fixture(autouse=True)
def shipped_plans() -> Iterator[None]:
    plans.configure(None)  # pro bills overage, free blocks; pro's email quota: 100,000
    yield
    plans.configure(None)


def change(after: int, added: int, *, plan: str = "pro", channel: str = "email") -> Change:
    return Change(TENANT, "2026-12", channel, plan, after, added)


@pytest.mark.parametrize(
    ("after", "added", "over"),
    [
        (99_990, 10, 0),  # up to the quota's last message
        (100_000, 10, 0),  # the quota exactly
        (100_001, 1, 1),  # the first past it
        (100_004, 10, 4),  # across it: only the part past it
        (100_050, 10, 10),  # all past it
        (100_000, 0, 0),
    ],
)
def test_only_what_the_flush_took_past_the_quota_is_billed(
    after: int, added: int, over: int
) -> None:
    expected = {(TENANT, "2026-12"): over} if over else {}
    assert quantities([change(after, added)]) == expected


def test_channels_sum_per_tenant_and_period_and_blocking_plans_never_bill() -> None:
    found = quantities(
        [
            change(100_003, 5),
            change(5_002, 10, channel="sms"),  # pro's sms quota: 5,000
            Change(TENANT, "2026-11", "email", "pro", 100_001, 1),  # another month
            Change(OTHER, "2026-12", "sms", "free", 500, 10),  # free blocks
            Change(OTHER, "2026-12", "sms", "platinum", 500, 10),  # unknown: free's terms
            Change(OTHER, "2026-12", "email", "growth", 10**9, 10),  # no quota at all
        ]
    )
    assert found == {(TENANT, "2026-12"): 3 + 2, (TENANT, "2026-11"): 1}


def test_a_failed_report_waits_longer_each_time_up_to_an_hour() -> None:
    waits = [backoff(attempts) for attempts in (1, 2, 3, 6, 7, 50, 10_000)]
    minutes = [int(w / timedelta(minutes=1)) for w in waits]
    assert minutes == [1, 2, 4, 32, 60, 60, 60]
