"""The plans file: the shipped one is valid and keeps the rates tenants had; a bad one is
refused at start-up with an error naming the file and the place."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.settings import SettingsError, load_settings
from app.tenants import plans
from app.tenants.plans import PlanLimits, PlansFileError

GOOD = """
[plans.free]
api_rate = 25
api_burst = 100
send_rate = 50
send_burst = 500
render_ms_rate = 200
render_ms_burst = 5000
log_retention_days = 7
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "plans.toml"
    path.write_text(text)
    return path


def test_the_shipped_file_has_free_pro_scale_and_the_older_plans() -> None:
    shipped = plans.load(plans.DEFAULT_FILE)
    assert list(shipped.plans) == ["free", "pro", "scale", "starter", "growth", "enterprise"]
    assert shipped.plans["free"].limits == PlanLimits(25, 100, 50, 500, 200, 5_000, 7)
    assert shipped.plans["free"].overage == "block"
    assert shipped.plans["free"].quota_for("sms") == 100
    assert shipped.plans["pro"].overage == "bill" and shipped.plans["pro"].price_per_1000
    # Tenants of the older plans keep their rates and get no quota.
    assert shipped.plans["enterprise"].limits == PlanLimits(
        5000, 10000, 20000, 20000, 4_000, 60_000, 90
    )
    assert shipped.plans["growth"].quota_for("email") is None
    assert shipped.get("platinum") == shipped.plans["free"]


def test_a_minimal_file_takes_defaults(tmp_path: Path) -> None:
    loaded = plans.load(write(tmp_path, GOOD))
    free = loaded.plans["free"]
    assert (free.members, free.overage, free.quota_for("sms"), free.stripe_price_id) == (
        0,
        "block",
        None,
        None,
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GOOD + "colour = 'red'\n", "unknown field `colour` - in [plans.free]"),
        (GOOD.replace("api_burst = 100", "api_burst = 'many'"), "at `plans.free.api_burst`"),
        (GOOD.replace("send_rate = 50", "send_rate = 0"), "at `plans.free.send_rate`"),
        (GOOD + "[plans.free.quota]\nfax = 3\n", "unknown field `fax` - at `plans.free.quota`"),
        (GOOD + "[plans.free.quota]\nemail = -1\n", "at `plans.free.quota.email`"),
        (GOOD + "overage = 'bill'\n", "overage = 'bill' needs price_per_1000"),
        (GOOD + "overage = 'bill'\nprice_per_1000 = 'x'\n", "price_per_1000 must be a decimal"),
        (GOOD + "price_per_1000 = '1.00'\n", "price_per_1000 is only for overage = 'bill'"),
        (GOOD + "overage = 'maybe'\n", "at `plans.free.overage`"),
        (GOOD.replace("[plans.free]", "[plans.basic]"), "a plan named 'free' is required"),
        ("[plans.free\n", "not valid TOML"),
        (GOOD + "[extras]\n", "unknown top-level key 'extras'"),
        (GOOD.replace("[plans.free]", "[plans.Free]") + GOOD, "plan name 'Free'"),
    ],
)
def test_bad_files_are_refused_naming_the_place(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(PlansFileError) as error:
        plans.load(path)
    assert str(path) in str(error.value)
    assert expected in str(error.value)


def test_settings_refuse_a_bad_plans_file_or_default_plan(tmp_path: Path) -> None:
    bad = write(tmp_path, GOOD + "colour = 'red'\n")
    try:
        with pytest.raises(SettingsError) as error:
            load_settings({"HERALD_PLANS_FILE": str(bad)})
        assert error.value.variable == "HERALD_PLANS_FILE"
        with pytest.raises(SettingsError) as error:
            load_settings({"HERALD_PLANS_FILE": str(tmp_path / "missing.toml")})
        assert "cannot be read" in str(error.value)
        with pytest.raises(SettingsError) as error:
            load_settings({"HERALD_BILLING_DEFAULT_PLAN": "gold"})
        assert error.value.variable == "HERALD_BILLING_DEFAULT_PLAN"
        assert "'gold' is not in the file" in str(error.value)
        good = load_settings({"HERALD_BILLING_DEFAULT_PLAN": "pro", "HERALD_METERING": "off"})
        assert (good.billing_default_plan, good.metering) == ("pro", False)
        assert plans.catalogue().default_plan == "pro"
    finally:
        plans.configure(None)


def test_the_plans_file_is_where_prices_are_named(tmp_path: Path) -> None:
    pro = GOOD.replace("[plans.free]", "[plans.pro]")
    loaded = plans.load(write(tmp_path, GOOD + pro + 'stripe_price_id = "price_pro"\n'))
    assert loaded.prices() == {"pro": "price_pro"}
    assert (loaded.plan_of_price("price_pro"), loaded.plan_of_price("price_x")) == ("pro", None)
    assert loaded.plan_of_price(None) is None
    # Two plans at one price: a subscription at it could not say which plan it pays for.
    twice = GOOD + 'stripe_price_id = "price_1"\n' + pro + 'stripe_price_id = "price_1"\n'
    with pytest.raises(PlansFileError) as error:
        plans.load(write(tmp_path, twice))
    assert "plans 'free' and 'pro' both have stripe_price_id 'price_1'" in str(error.value)
    with pytest.raises(PlansFileError) as error:
        plans.load(write(tmp_path, GOOD + 'stripe_price_id = ""\n'))
    assert "plans.free.stripe_price_id" in str(error.value)
