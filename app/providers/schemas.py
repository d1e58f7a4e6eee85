"""Request and response bodies of /v1/providers. Credentials go in, never out."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

from app.channels import Channel
from app.providers.breaker import BreakerState
from app.providers.credentials import Provider
from app.providers.models import ProviderConfig

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
Priority = Annotated[int, msgspec.Meta(ge=0, le=1000, description="Lower is tried first.")]
# At least one send per 100 s: slower rates put the Redis bucket's expiry and waits out of
# range, and every take for the config would fail.
MIN_RATE = 0.01
Rate = Annotated[float, msgspec.Meta(ge=MIN_RATE, le=100_000, description="Sends per second.")]
Burst = Annotated[int, msgspec.Meta(ge=1, le=100_000)]
Credentials = Annotated[
    dict[str, Any],
    msgspec.Meta(description="Secret settings of the provider; stored encrypted, never returned."),
]
Options = Annotated[dict[str, Any], msgspec.Meta(description="Non-secret settings.")]


class ProviderCreate(msgspec.Struct, forbid_unknown_fields=True):
    channel: Channel
    provider: Provider
    name: Name
    priority: Priority = 0
    rate_per_second: Rate | None = None
    burst: Burst | None = None
    credentials: Credentials = msgspec.field(default_factory=dict)
    options: Options = msgspec.field(default_factory=dict)
    enabled: bool = True


class ProviderUpdate(msgspec.Struct, forbid_unknown_fields=True):
    """Absent fields keep their value; `credentials` and `options`, when given, replace the
    stored object whole. Channel and provider cannot change: create another config."""

    name: Name | None = None
    priority: Priority | None = None
    rate_per_second: Rate | None = None
    burst: Burst | None = None
    credentials: Credentials | None = None
    options: Options | None = None
    enabled: bool | None = None


class BreakerOut(msgspec.Struct):
    state: Annotated[
        Literal["closed", "open", "half_open"],
        msgspec.Meta(
            description="closed: in use; open: skipped until `retry_at`; half_open: one "
            "probe message decides whether it closes or opens again."
        ),
    ]
    calls: Annotated[int, msgspec.Meta(description="Outcomes counted in the current window.")]
    failures: int
    opened_at: datetime | None
    retry_at: Annotated[
        datetime | None,
        msgspec.Meta(description="Open: when a probe may go; half-open: when the probe expires."),
    ]

    @classmethod
    def of(cls, state: BreakerState) -> BreakerOut:
        return cls(state.state, state.calls, state.failures, state.opened_at, state.retry_at)


Breaker = Annotated[
    BreakerOut | None,
    msgspec.Meta(
        description="The config's circuit breaker, shared by all workers; null when its state "
        "could not be read (Redis did not answer)."
    ),
]


class ProviderOut(msgspec.Struct):
    id: uuid.UUID
    object: Literal["provider"]
    channel: Channel
    provider: Provider
    name: str
    priority: int
    rate_per_second: float
    burst: int
    enabled: bool
    options: dict[str, Any]
    fingerprint: Annotated[
        str,
        msgspec.Meta(
            description="16 hex digits of a keyed digest (HMAC-SHA256 under a server key) of "
            "the credentials: equal credentials give equal fingerprints, and a fingerprint "
            "cannot be checked against a guessed secret."
        ),
    ]
    created_at: datetime
    updated_at: datetime
    breaker: Breaker

    @classmethod
    def of(cls, config: ProviderConfig, breaker: BreakerState | None) -> ProviderOut:
        return cls(**_fields(config), breaker=_breaker(breaker))


class ProviderSaved(ProviderOut, omit_defaults=True):
    secret: (
        Annotated[
            str,
            msgspec.Meta(
                description="A webhook signing secret Herald generated: in this answer only."
            ),
        ]
        | None
    ) = None

    @classmethod
    def with_secret(
        cls, config: ProviderConfig, secret: str | None, breaker: BreakerState | None
    ) -> ProviderSaved:
        return cls(**_fields(config), breaker=_breaker(breaker), secret=secret)


def _breaker(state: BreakerState | None) -> BreakerOut | None:
    return None if state is None else BreakerOut.of(state)


def _fields(config: ProviderConfig) -> dict[str, Any]:
    return {
        "id": config.id,
        "object": "provider",
        "channel": config.channel,
        "provider": config.provider,
        "name": config.name,
        "priority": config.priority,
        "rate_per_second": config.rate_per_second,
        "burst": config.burst,
        "enabled": config.enabled,
        "options": config.options,
        "fingerprint": config.fingerprint,
        "created_at": config.created_at,
        "updated_at": config.updated_at,
    }


class ProviderList(msgspec.Struct):
    object: Literal["list"]
    data: list[ProviderOut]
    has_more: bool
    next_cursor: str | None


class ProviderDeleted(msgspec.Struct):
    id: uuid.UUID
    object: Literal["provider"]
    deleted: bool
