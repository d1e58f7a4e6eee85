"""Bodies of /v1/tenant and its settings (kill switches, retry policy, default locale, what a
broadcast larger than the quota left does).

Limits are checked again by app/tenants/delivery_controls.py (the retry policy's bounds
are app/delivery/retry.py's), which Python callers reach without msgspec's decoding.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

import msgspec

from app.delivery.retry import MAX_ATTEMPTS_RANGE, WINDOW_HOURS_RANGE, RetryPolicy
from app.recipients.schemas import Locale
from app.usage.overflow import OnQuotaExceeded

KillSwitchMode = Literal["pause", "drop_noncritical", "off"]

_DEFAULT = RetryPolicy()


class KillSwitchUpdate(msgspec.Struct, forbid_unknown_fields=True):
    openapi_examples: ClassVar[list[dict[str, Any]]] = [
        {"mode": "pause"},
        {"mode": "drop_noncritical"},
        {"mode": "off"},
    ]

    mode: KillSwitchMode


class KillSwitches(msgspec.Struct):
    object: Literal["kill_switches"]
    channels: dict[str, str]  # only switched channels; an absent one flows normally


class KillSwitchChange(msgspec.Struct):
    object: Literal["kill_switch"]
    channel: str
    mode: KillSwitchMode
    previous: KillSwitchMode
    channels: dict[str, str]  # every switch of the tenant after the change
    released: int  # held messages queued for delivery again (a pause was lifted)
    dropped: int  # waiting non-critical messages skipped (drop_noncritical was set)


class RetryPolicyUpdate(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The PUT body: it replaces the whole policy; a member left out takes its default."""

    openapi_examples: ClassVar[list[dict[str, Any]]] = [
        {"max_attempts": 5, "window_hours": 12},
        {"max_attempts": 20},
        {},
    ]

    max_attempts: Annotated[
        int, msgspec.Meta(ge=MAX_ATTEMPTS_RANGE[0], le=MAX_ATTEMPTS_RANGE[1])
    ] = _DEFAULT.max_attempts
    window_hours: Annotated[
        float, msgspec.Meta(ge=WINDOW_HOURS_RANGE[0], le=WINDOW_HOURS_RANGE[1])
    ] = _DEFAULT.window_hours


class RetryPolicyOut(msgspec.Struct):
    object: Literal["retry_policy"]
    max_attempts: int
    window_hours: float

    @classmethod
    def of(cls, policy: RetryPolicy) -> RetryPolicyOut:
        return cls("retry_policy", policy.max_attempts, policy.window_hours)


class DefaultLocaleUpdate(msgspec.Struct, forbid_unknown_fields=True):
    """The PUT body: a BCP 47 tag such as `fr-CA`, or null for none."""

    openapi_examples: ClassVar[list[dict[str, Any]]] = [
        {"default_locale": "fr-CA"},
        {"default_locale": "en"},
    ]

    default_locale: Locale | None


class DefaultLocaleOut(msgspec.Struct):
    object: Literal["default_locale"]
    default_locale: str | None


class OnQuotaExceededUpdate(msgspec.Struct, forbid_unknown_fields=True):
    """The PUT body: what a broadcast (a topic, everyone, a filter) larger than what is left
    of a blocking plan's monthly quota does: `send_partial`, sent up to the quota and the
    rest skipped with reason `quota`; or `refuse`, nothing sent and the notification ended
    `refused`. A notification's own `on_quota_exceeded` wins over it."""

    openapi_examples: ClassVar[list[dict[str, Any]]] = [
        {"on_quota_exceeded": "refuse"},
        {"on_quota_exceeded": "send_partial"},
    ]

    on_quota_exceeded: OnQuotaExceeded


class OnQuotaExceededOut(msgspec.Struct):
    object: Literal["on_quota_exceeded"]
    on_quota_exceeded: OnQuotaExceeded
