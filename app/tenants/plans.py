"""What each plan allows a tenant, read from the operator's plans file (TOML).

A plan sets, per tenant and mode: API request and send rates, render time, log retention,
dashboard members, and a monthly message quota per channel group with its overage policy
("block": refused past the quota; "bill": allowed, and billed per 1,000 past it), and the
Stripe price a paid plan is sold at (`stripe_price_id`: the one place prices are named, so
that an operator with separate Stripe test and live accounts keeps a plans file for each).
The file is app/tenants/plans.toml unless HERALD_PLANS_FILE names another; it is validated
strictly (unknown keys, wrong types, a missing plan, two plans at one price are errors
naming the place) when the settings are read at start-up, so a bad file stops the process
instead of a tenant's send.

Rates are tokens per second refilled into token buckets (app/ratelimit); a burst is a
bucket's capacity, what may be spent at once after a quiet spell. Render time is in
milliseconds of the render processes' time, charged by what each render took (a render
killed at its deadline costs the deadline): a typical render takes well under 1 ms, so the
budget only binds templates that run into the 100 ms render limit, over and over.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Literal

import msgspec

DEFAULT_FILE = Path(__file__).with_name("plans.toml")
FALLBACK_PLAN = "free"
PLAN_NAME = re.compile(
    r"[a-z][a-z0-9_-]{0,31}"
)  # tenants.plan is 32 characters  # what an unknown plan gets: never more than the free plan

Positive = Annotated[float, msgspec.Meta(gt=0)]
Count = Annotated[int, msgspec.Meta(ge=0)]


class PlansFileError(ValueError):
    """The plans file cannot be used; the message names the file and the place."""


@dataclass(frozen=True)
class PlanLimits:
    api_rate: float  # API requests per second, all of a tenant's keys of one mode together
    api_burst: int
    send_rate: float  # messages handed to providers per second, per tenant and mode
    send_burst: int
    render_ms_rate: float  # render milliseconds per second, per tenant and mode (all renders)
    render_ms_burst: int
    log_retention_days: int  # how long providers' receipts (and their events) are kept


class Quota(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Messages a month per channel group; None: no quota."""

    email: Count | None = None
    sms: Count | None = None
    push: Count | None = None
    webhook: Count | None = None
    inbox: Count | None = None


class Plan(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """One plan as the file states it."""

    api_rate: Positive
    api_burst: Annotated[int, msgspec.Meta(ge=1)]
    send_rate: Positive
    send_burst: Annotated[int, msgspec.Meta(ge=1)]
    render_ms_rate: Positive
    render_ms_burst: Annotated[int, msgspec.Meta(ge=1)]
    log_retention_days: Annotated[int, msgspec.Meta(ge=1, le=3650)]
    members: Count = 0  # 0: no limit
    overage: Literal["block", "bill"] = "block"
    price_per_1000: str | None = None
    # The Stripe price a subscription to this plan pays (the only place prices are named):
    # Checkout sells it, and a subscription at it gives the plan. None: not for sale.
    stripe_price_id: Annotated[str, msgspec.Meta(min_length=1, max_length=255)] | None = None
    quota: Quota = Quota()

    def __post_init__(self) -> None:
        if self.overage == "bill":
            if self.price_per_1000 is None:
                raise ValueError("overage = 'bill' needs price_per_1000")
            try:
                price = Decimal(self.price_per_1000)
            except InvalidOperation:
                raise ValueError("price_per_1000 must be a decimal string, e.g. '0.80'") from None
            if not price.is_finite() or price < 0:
                raise ValueError("price_per_1000 must be a decimal of 0 or more")
        elif self.price_per_1000 is not None:
            raise ValueError("price_per_1000 is only for overage = 'bill'")

    @property
    def limits(self) -> PlanLimits:
        return PlanLimits(
            self.api_rate,
            self.api_burst,
            self.send_rate,
            self.send_burst,
            self.render_ms_rate,
            self.render_ms_burst,
            self.log_retention_days,
        )

    def quota_for(self, channel: str) -> int | None:
        """The channel group's monthly quota; None: no quota."""
        quota: int | None = getattr(self.quota, channel, None)
        return quota


@dataclass(frozen=True)
class Catalogue:
    """Every plan of the file, and the plan a tenant gets when nothing says otherwise."""

    plans: dict[str, Plan]
    default_plan: str
    source: Path

    def get(self, name: str) -> Plan:
        """The named plan; an unknown one gets the fallback's (free), never more."""
        return self.plans.get(name) or self.plans[FALLBACK_PLAN]

    def prices(self) -> dict[str, str]:
        """The plans for sale, each with its Stripe price, in the file's order."""
        return {n: p.stripe_price_id for n, p in self.plans.items() if p.stripe_price_id}

    def plan_of_price(self, price_id: str | None) -> str | None:
        """The plan sold at this Stripe price, if any (load makes it at most one)."""
        for name, price in self.prices().items():
            if price == price_id:
                return name
        return None


def load(path: Path, default_plan: str = FALLBACK_PLAN) -> Catalogue:
    """Read and validate a plans file; PlansFileError says what is wrong and where."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise PlansFileError(f"{path}: cannot be read ({error.strerror})") from None
    except tomllib.TOMLDecodeError as error:
        raise PlansFileError(f"{path}: not valid TOML ({error})") from None
    unknown = sorted(set(raw) - {"plans"})
    if unknown:
        raise PlansFileError(f"{path}: unknown top-level key {unknown[0]!r} (only [plans.<name>])")
    tables = raw.get("plans")
    if not isinstance(tables, dict):
        raise PlansFileError(f"{path}: no [plans.<name>] tables")
    found: dict[str, Plan] = {}
    for name, table in tables.items():
        if not PLAN_NAME.fullmatch(name):
            raise PlansFileError(f"{path}: plan name {name!r}: lowercase letters, digits, - or _")
        try:
            found[name] = msgspec.convert(table, Plan)
        except msgspec.ValidationError as error:
            # msgspec names the place from the plan's table (`$.quota.sms`): name the plan.
            where = str(error).replace("`$", f"`plans.{name}").replace("`$`", f"`plans.{name}`")
            if "`plans." not in where:
                where += f" - in [plans.{name}]"
            raise PlansFileError(f"{path}: {where}") from None
    sellers: dict[str, str] = {}
    for name, found_plan in found.items():
        price = found_plan.stripe_price_id
        if price is None:
            continue
        if price in sellers:
            # A subscription at that price could not tell which plan it pays for.
            raise PlansFileError(
                f"{path}: plans {sellers[price]!r} and {name!r} both have stripe_price_id "
                f"{price!r}: a price sells one plan"
            )
        sellers[price] = name
    if FALLBACK_PLAN not in found:
        raise PlansFileError(
            f"{path}: a plan named {FALLBACK_PLAN!r} is required (unknown plans get its limits)"
        )
    if default_plan not in found:
        raise PlansFileError(f"{path}: the default plan {default_plan!r} is not in the file")
    return Catalogue(found, default_plan, path)


_catalogue: Catalogue | None = None


def configure(path: Path | None, default_plan: str | None = None) -> Catalogue:
    """Load the operator's plans (the shipped file when `path` is None) for this process."""
    global _catalogue
    _catalogue = load(path or DEFAULT_FILE, default_plan or FALLBACK_PLAN)
    return _catalogue


def catalogue() -> Catalogue:
    """This process's plans: as configured, else from HERALD_PLANS_FILE or the shipped file."""
    if _catalogue is None:
        named = os.environ.get("HERALD_PLANS_FILE") or None
        return configure(
            Path(named) if named else None, os.environ.get("HERALD_BILLING_DEFAULT_PLAN")
        )
    return _catalogue


def plan(name: str) -> Plan:
    """The plan a tenant's `plan` names (the free plan for a name the file lacks)."""
    return catalogue().get(name)


def limits_for(plan_name: str) -> PlanLimits:
    """The plan's rates; an unknown plan gets the free plan's, never more."""
    return plan(plan_name).limits


def plan_names() -> list[str]:
    return list(catalogue().plans)
