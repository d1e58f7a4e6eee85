"""Request and response bodies of /v1/providers. Credentials go in, never out."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal, Union

import msgspec

from app.channels import Channel
from app.providers.breaker import BreakerState
from app.providers.credentials import PROVIDERS, SPECS, Provider
from app.providers.models import ProviderConfig

# Not only whitespace (the service strips it); \x1c-\x1f and \x85 are whitespace to Python.
NOT_BLANK = r"[^\s\x1c-\x1f\x85]"
Name = Annotated[
    str, msgspec.Meta(min_length=1, max_length=100, extra_json_schema={"pattern": NOT_BLANK})
]
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


def _pairs_of_the_providers() -> dict[str, Any]:
    """JSON Schema: `credentials` and `options` of a PUT are both those of one provider (the
    config's: the service then checks them against it)."""
    variants: dict[str, dict[str, Any]] = {}
    for provider in PROVIDERS:
        spec = SPECS[provider]
        options: dict[str, Any] = {"$ref": f"#/components/schemas/{spec.options.__name__}"}
        if spec.options_schema:
            options = {"allOf": [options, spec.options_schema]}
        credentials: dict[str, Any] = {"$ref": f"#/components/schemas/{spec.credentials.__name__}"}
        if spec.credentials_schema:
            credentials = {"allOf": [credentials, spec.credentials_schema]}
        variant = {
            "properties": {
                "credentials": {"anyOf": [credentials, {"type": "null"}]},
                "options": {"anyOf": [options, {"type": "null"}]},
            }
        }
        variants.setdefault(repr(variant), variant)
    return {"anyOf": list(variants.values())}


def _required(kind: type[msgspec.Struct]) -> bool:
    return any(field.required for field in msgspec.structs.fields(kind))


def _variant(provider: Provider) -> type[msgspec.Struct]:
    """The body of POST /v1/providers for one provider: its channels, credentials, options."""
    spec = SPECS[provider]
    channel: Any = Literal[spec.channels]
    options_type: Any = spec.options
    if spec.options_schema:
        options_type = Annotated[spec.options, msgspec.Meta(extra_json_schema=spec.options_schema)]
    credentials_type: Any = spec.credentials
    if spec.credentials_schema:
        credentials_type = Annotated[
            spec.credentials, msgspec.Meta(extra_json_schema=spec.credentials_schema)
        ]
    credentials: tuple[str, Any] | tuple[str, Any, Any] = (
        ("credentials", credentials_type)
        if _required(spec.credentials)
        else ("credentials", credentials_type, msgspec.field(default_factory=dict))
    )
    options: tuple[str, Any] | tuple[str, Any, Any] = (
        ("options", options_type)
        if _required(spec.options) or spec.options_schema
        else ("options", options_type, msgspec.field(default_factory=dict))
    )
    return msgspec.defstruct(
        f"ProviderCreate{provider.title()}",
        [
            ("channel", channel),
            ("name", Name),
            credentials,
            options,
            ("priority", Priority, 0),
            ("rate_per_second", Rate | None, None),
            ("burst", Burst | None, None),
            ("enabled", bool, True),
        ],
        tag_field="provider",
        tag=provider,
        forbid_unknown_fields=True,
        kw_only=True,
        module=__name__,
    )


#: What POST /v1/providers accepts, told apart by `provider` (the OpenAPI discriminator).
ProviderCreateVariant = Union[tuple(_variant(provider) for provider in PROVIDERS)]  # type: ignore[valid-type]  # noqa: UP007


class ProviderCreate(msgspec.Struct, forbid_unknown_fields=True):
    """A provider config: `provider` says which `credentials` and `options` it takes and which
    channel it may deliver."""

    openapi_type: ClassVar[Any] = ProviderCreateVariant
    openapi_examples: ClassVar[list[dict[str, Any]]] = [
        {
            "channel": "email",
            "provider": "smtp",
            "name": "Postmark relay",
            "credentials": {"username": "apikey", "password": "s3cret-relay-password"},
            "options": {"host": "smtp.example.com", "port": 587, "from_email": "hi@example.com"},
        },
        {
            "channel": "email",
            "provider": "sendgrid",
            "name": "SendGrid",
            "priority": 10,
            "credentials": {"api_key": "SG.xxxxxxxx"},
            "options": {"from_email": "hi@example.com", "from_name": "Example"},
        },
        {
            "channel": "sms",
            "provider": "twilio",
            "name": "Twilio US",
            "rate_per_second": 1,
            "burst": 1,
            "credentials": {
                "account_sid": "AC" + "0123456789abcdef" * 2,
                "auth_token": "twilio-auth-token",
            },
            "options": {"from_number": "+14155550123"},
        },
        {"channel": "webhook", "provider": "webhook", "name": "Our endpoint signer"},
        {"channel": "inbox", "provider": "sandbox", "name": "Sandbox inbox", "enabled": False},
    ]

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

    openapi_extra: ClassVar[dict[str, Any]] = _pairs_of_the_providers()
    openapi_examples: ClassVar[list[dict[str, Any]]] = [
        {"name": "Primary", "priority": 0},
        {"enabled": False},
        {"rate_per_second": 20, "burst": 40},
    ]

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
    receipts_url: Annotated[
        str | None,
        msgspec.Meta(
            description="Where the provider posts its delivery receipts (event webhook, status "
            "callback, SNS subscription); null for providers that send none. See "
            "docs/api/receipts.md."
        ),
    ] = None

    @classmethod
    def of(
        cls, config: ProviderConfig, breaker: BreakerState | None, public_url: str
    ) -> ProviderOut:
        return cls(**_fields(config, public_url), breaker=_breaker(breaker))


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
        cls,
        config: ProviderConfig,
        secret: str | None,
        breaker: BreakerState | None,
        public_url: str,
    ) -> ProviderSaved:
        return cls(**_fields(config, public_url), breaker=_breaker(breaker), secret=secret)


def _breaker(state: BreakerState | None) -> BreakerOut | None:
    return None if state is None else BreakerOut.of(state)


# The providers whose receipts Herald reads (app/receipts/api.py).
RECEIVING = ("sendgrid", "mailgun", "twilio", "ses", "postmark", "webhook")


def _fields(config: ProviderConfig, public_url: str) -> dict[str, Any]:
    receipts = f"{public_url}/webhooks/providers/{config.id}"
    return {
        "receipts_url": receipts if config.provider in RECEIVING else None,
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
