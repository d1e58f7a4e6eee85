"""Live and test mode: two separate worlds of data inside one tenant, as Stripe keeps them.

Every object a send can read or change (recipients and their preferences, categories,
templates, suppressions, notifications and their messages) belongs to one mode, and every
query for one is scoped by (tenant, mode): an `hk_test_` key sees and changes test objects
only, an `hk_live_` key live ones only. Test mode never reaches a real provider (it
delivers to the sandbox), so a leaked test key can neither read live data nor change what
live sends say or where they go. What belongs to the tenant as a whole (provider configs,
kill switches, retry policy, default locale) applies to live sending, and a test key may
read but not change it.
"""

from __future__ import annotations

from typing import Literal

from sqlalchemy import CheckConstraint, String
from sqlalchemy.orm import Mapped, mapped_column

Mode = Literal["live", "test"]
MODES: tuple[Mode, ...] = ("live", "test")


def mode_column() -> Mapped[str]:
    """The `mode` column of a mode-scoped table: set on every insert, never defaulted."""
    return mapped_column(String(8))


def mode_check() -> CheckConstraint:
    return CheckConstraint(f"mode IN {MODES!r}", name="mode")
