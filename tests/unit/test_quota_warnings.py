"""The quota warning's thresholds and its mail's words, for blocking and billing plans."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from app.usage.warnings import reached, warning_mail

RESETS = datetime(2027, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("used", "quota", "expected"),
    [
        (0, 100, None),
        (79, 100, None),
        (80, 100, 80),
        (99, 100, 80),
        (100, 100, 100),
        (250, 100, 100),
        (2_400, 3_000, 80),  # exactly 80 %
        (2_399, 3_000, None),
        (0, 0, None),  # nothing used of nothing: no warning
        (1, 0, 100),  # a quota of none: the first message is past it
    ],
)
def test_the_highest_threshold_reached(used: int, quota: int, expected: int | None) -> None:
    assert reached(used, quota) == expected


def mail(plan: str, threshold: int, used: int) -> tuple[str, str]:
    return warning_mail(
        tenant_name="Acme",
        plan_name=plan,
        channel="sms",
        threshold=threshold,
        used=used,
        quota=5_000,
        resets_at=RESETS,
        public_url="https://herald.example",
    )


def test_a_blocking_plan_says_further_messages_are_refused() -> None:
    subject, text = mail("free", 80, 4_000)
    assert subject == "Acme has used 80 % of its SMS quota this month"
    assert "Acme has sent 4,000 of the 5,000 SMS messages its free plan includes" in text
    assert "refused (HTTP 429, quota_exceeded) until it resets on 1 January 2027" in text
    assert "https://herald.example/billing" in text
    subject, text = mail("free", 100, 5_000)
    assert subject == "Acme has used all of its SMS quota this month"
    assert "Further SMS messages are refused (HTTP 429, quota_exceeded)" in text


def test_a_billing_plan_says_further_messages_are_billed_at_its_price() -> None:
    _, text = mail("pro", 80, 4_000)
    assert "Past the quota, SMS messages are billed as overage, at 1.00 per 1,000" in text
    _, text = mail("pro", 100, 5_001)
    assert "Further SMS messages are sent and billed as overage, at 1.00 per 1,000" in text
    assert "refused" not in text
