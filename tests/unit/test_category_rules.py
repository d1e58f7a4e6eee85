"""What a category's being critical changes for a send: one rule, read by intake and planning."""

from __future__ import annotations

from app.categories.keys import is_category_key
from app.categories.rules import high_priority_refusal, rules_for


def test_a_critical_category_ignores_opt_outs_and_drops_and_may_be_high_priority() -> None:
    rules = rules_for(True)
    assert rules.ignores_opt_outs
    assert rules.ignores_drop_noncritical
    assert rules.may_be_high_priority


def test_any_other_category_follows_opt_outs_and_drops_and_stays_off_the_high_queue() -> None:
    rules = rules_for(False)
    assert not rules.ignores_opt_outs
    assert not rules.ignores_drop_noncritical
    assert not rules.may_be_high_priority
    assert "'news' is not critical" in high_priority_refusal("news")


def test_category_keys() -> None:
    assert is_category_key("billing.invoices_v2-x")
    for bad in ("", "Billing", "-x", "a" * 65, "a b", "é"):
        assert not is_category_key(bad)
