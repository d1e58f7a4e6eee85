"""What each provider needs: its channels, credentials (secret) and options (not secret).

One msgspec Struct per provider for each half. The API validates a tenant's input against
them (errors name `credentials.api_key`, `options.domain`, …) and the adapters read the
stored, decrypted values back through the same Structs, so both sides agree by construction.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from app.channels import CHANNELS, Channel
from app.providers.standard_webhooks import generate_secret, secret_problem

S = TypeVar("S", bound=msgspec.Struct)

Provider = Literal[
    "smtp", "sendgrid", "mailgun", "ses", "postmark", "twilio", "fcm", "apns", "webhook", "sandbox"
]
PROVIDERS: tuple[Provider, ...] = (
    "smtp",
    "sendgrid",
    "mailgun",
    "ses",
    "postmark",
    "twilio",
    "fcm",
    "apns",
    "webhook",
    "sandbox",
)

Text = Annotated[str, msgspec.Meta(min_length=1, max_length=500)]
Secret = Annotated[str, msgspec.Meta(min_length=1, max_length=10_000)]
Email = Annotated[str, msgspec.Meta(pattern=r"^[^@\s<>\"]+@[^@\s<>\"]+\.[^@\s<>\"]+$")]
Hostname = Annotated[
    str, msgspec.Meta(pattern=r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$", max_length=253)
]
SENDER_PATTERN = r"^(\+[1-9][0-9]{6,14}|[A-Za-z0-9 ]{1,11})$"
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=r"^[^\r\n]*$")]


class InvalidProviderConfig(ValueError):
    """A config cannot be stored as given; `field` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class Empty(msgspec.Struct, forbid_unknown_fields=True):
    pass


class EmailOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    from_email: Email
    from_name: Name | None = None
    reply_to: Email | None = None


class SmtpCredentials(msgspec.Struct, forbid_unknown_fields=True):
    username: Text | None = None
    password: Secret | None = None


class SmtpOptions(EmailOptions, kw_only=True):
    host: Hostname
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)]
    # starttls: upgrade on 587/25 and refuse a server that cannot; tls: implicit TLS (465);
    # none: plain text, for relays on a private network only.
    security: Literal["starttls", "tls", "none"] = "starttls"


class ApiKeyCredentials(msgspec.Struct, forbid_unknown_fields=True):
    api_key: Secret


class SendgridCredentials(ApiKeyCredentials, omit_defaults=True):
    # The Event Webhook's verification key (Settings → Mail Settings → Signed Event Webhook):
    # base64 DER, as SendGrid shows it. Without it, receipts are refused (401).
    webhook_verification_key: (
        Annotated[str, msgspec.Meta(min_length=1, max_length=1_000, pattern=r"^[A-Za-z0-9+/=]+$")]
        | None
    ) = None


class MailgunCredentials(ApiKeyCredentials, omit_defaults=True):
    # The HTTP webhook signing key (Sending → Webhooks). Without it, receipts are refused.
    webhook_signing_key: Secret | None = None


class SendgridOptions(EmailOptions, kw_only=True):
    pass


class MailgunOptions(EmailOptions, kw_only=True):
    domain: Hostname
    region: Literal["us", "eu"] = "us"


class SesCredentials(msgspec.Struct, forbid_unknown_fields=True):
    # An IAM user's long-lived access key: the worker signs each request with it (SigV4).
    access_key_id: Annotated[str, msgspec.Meta(pattern=r"^[A-Z0-9]{16,128}$")]
    secret_access_key: Annotated[str, msgspec.Meta(pattern=r"^[!-~]+$", max_length=128)]


AWS_REGION = r"^[a-z]{2}(-[a-z]+)+-\d$"
#: An SNS topic Herald will take SES events from (the receipts check each event's TopicArn
#: against this list: a valid SNS signature alone does not say the topic is the tenant's).
SNS_TOPIC_ARN = r"^arn:aws(-[a-z]+)?:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]{1,256}$"


class SesOptions(EmailOptions, kw_only=True):
    region: Annotated[str, msgspec.Meta(pattern=AWS_REGION, max_length=32)]
    # SES publishes delivery events only for messages sent with a configuration set.
    configuration_set: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")] | None = None
    sns_topic_arns: Annotated[
        list[Annotated[str, msgspec.Meta(pattern=SNS_TOPIC_ARN, max_length=320)]],
        msgspec.Meta(max_length=10),
    ] = msgspec.field(default_factory=list)


# Sent as an HTTP header value: visible ASCII only, so it cannot split the header.
HeaderSafe = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=r"^[!-~]+$")]


class PostmarkCredentials(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    server_token: HeaderSafe
    # Postmark signs nothing: its webhooks carry these as basic-auth credentials in the URL
    # the tenant gives Postmark, and the receipts endpoint checks them. Both or neither.
    webhook_username: Annotated[str, msgspec.Meta(pattern=r"^[!-9;-~]{1,200}$")] | None = None
    webhook_password: HeaderSafe | None = None


class PostmarkOptions(EmailOptions, kw_only=True):
    message_stream: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,100}$")] = "outbound"


class TwilioCredentials(msgspec.Struct, forbid_unknown_fields=True):
    account_sid: Annotated[str, msgspec.Meta(pattern=r"^AC[0-9a-fA-F]{32}$")]
    auth_token: Secret


class TwilioOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    # E.164, or an alphanumeric sender id where the destination country allows one.
    from_number: Annotated[str, msgspec.Meta(pattern=SENDER_PATTERN)] | None = None
    messaging_service_sid: Annotated[str, msgspec.Meta(pattern=r"^MG[0-9a-fA-F]{32}$")] | None = (
        None
    )
    status_callback: Annotated[str, msgspec.Meta(pattern=r"^https://\S+$")] | None = None


PEM_DESCRIPTION = "An unencrypted PEM private key (`-----BEGIN PRIVATE KEY-----` …)."


class ServiceAccount(msgspec.Struct, kw_only=True):
    # Unknown fields are allowed (it is Google's JSON file pasted whole) and dropped on store.
    project_id: Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")]
    client_email: Email
    private_key: Annotated[Secret, msgspec.Meta(description=PEM_DESCRIPTION + " RSA.")]
    private_key_id: Text | None = None


class FcmCredentials(msgspec.Struct, forbid_unknown_fields=True):
    service_account: ServiceAccount


class ApnsCredentials(msgspec.Struct, forbid_unknown_fields=True):
    team_id: Annotated[str, msgspec.Meta(pattern=r"^[A-Z0-9]{10}$")]
    key_id: Annotated[str, msgspec.Meta(pattern=r"^[A-Z0-9]{10}$")]
    private_key: Annotated[Secret, msgspec.Meta(description=PEM_DESCRIPTION + " EC P-256 (.p8).")]


class ApnsOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    topic: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9.-]{1,200}$")]
    environment: Literal["sandbox", "production"] = "production"


#: A Standard Webhooks secret as `secret_problem` accepts it: whsec_ and standard base64 of
#: 24 to 64 bytes (32 to 88 characters, padded).
_B64 = "[A-Za-z0-9+/]"
WEBHOOK_SECRET_PATTERN = (
    rf"^whsec_(?:(?:{_B64}{{4}}){{8,20}}(?:{_B64}{{2}}==|{_B64}{{3}}=)?"
    rf"|(?:{_B64}{{4}}){{21}}(?:{_B64}{{2}}==)?)$"
)


class WebhookCredentials(msgspec.Struct, forbid_unknown_fields=True):
    secret: (
        Annotated[
            str,
            msgspec.Meta(
                max_length=200,
                description="Left out, Herald generates one and shows it once.",
                extra_json_schema={"pattern": WEBHOOK_SECRET_PATTERN},
            ),
        ]
        | None
    ) = None


@dataclass(frozen=True)
class ProviderSpec:
    channels: tuple[Channel, ...]
    credentials: type[msgspec.Struct]
    options: type[msgspec.Struct]
    rate_per_second: float  # defaults modelled on the providers' published limits
    burst: int
    check: Callable[[Any, Any], None] = lambda credentials, options: None
    # What `check` asks beyond the Structs, for the OpenAPI document where JSON Schema can
    # say it (JSON Schema keywords applied to `options`).
    options_schema: dict[str, Any] | None = None
    credentials_schema: dict[str, Any] | None = None  # the same, for `credentials`


def _check_twilio(credentials: TwilioCredentials, options: TwilioOptions) -> None:
    if not options.from_number and not options.messaging_service_sid:
        raise InvalidProviderConfig(
            "options.from_number", "give from_number or messaging_service_sid"
        )


def _single_lines(prefix: str, values: msgspec.Struct) -> None:
    """Every string of `values` (and of its lists) is one line. msgspec applies a `pattern`
    with re.search, whose `$` also matches before a final newline (JSON Schema's, in the
    OpenAPI document, does not): `"us-east-1\\n"` would pass the Struct and then break a
    URL or split an HTTP header at the first send."""
    for field in msgspec.structs.fields(values):
        value = getattr(values, field.name)
        for n, text in enumerate(value if isinstance(value, list) else [value]):
            if isinstance(text, str) and ("\n" in text or "\r" in text):
                index = f"[{n}]" if isinstance(value, list) else ""
                raise InvalidProviderConfig(
                    f"{prefix}.{field.name}{index}", "must not contain a line break"
                )


def _check_ses(credentials: SesCredentials, options: SesOptions) -> None:
    _single_lines("credentials", credentials)
    _single_lines("options", options)


def _check_postmark(credentials: PostmarkCredentials, options: PostmarkOptions) -> None:
    _single_lines("credentials", credentials)
    _single_lines("options", options)
    if (credentials.webhook_username is None) != (credentials.webhook_password is None):
        missing = "webhook_password" if credentials.webhook_password is None else "webhook_username"
        raise InvalidProviderConfig(
            f"credentials.{missing}", "give webhook_username and webhook_password together"
        )


#: `_check_postmark` in JSON Schema: both webhook credentials, or neither.
POSTMARK_WEBHOOK_PAIR: dict[str, Any] = {
    "anyOf": [
        {
            "required": ["webhook_username", "webhook_password"],
            "properties": {
                "webhook_username": {"type": "string"},
                "webhook_password": {"type": "string"},
            },
        },
        {
            "properties": {
                "webhook_username": {"type": "null"},
                "webhook_password": {"type": "null"},
            }
        },
    ]
}


def _check_fcm(credentials: FcmCredentials, options: Empty) -> None:
    key = _private_key("credentials.service_account.private_key", credentials.service_account)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise InvalidProviderConfig(
            "credentials.service_account.private_key", "must be the account's RSA private key"
        )


def _check_apns(credentials: ApnsCredentials, options: ApnsOptions) -> None:
    key = _private_key("credentials.private_key", credentials)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise InvalidProviderConfig(
            "credentials.private_key", "must be the .p8 token-signing key (EC P-256, PEM)"
        )


def _check_webhook(credentials: WebhookCredentials, options: Empty) -> None:
    if credentials.secret is not None and (problem := secret_problem(credentials.secret)):
        raise InvalidProviderConfig("credentials.secret", problem)


def _private_key(field: str, holder: ServiceAccount | ApnsCredentials) -> object:
    try:
        return load_pem_private_key(pem_bytes(holder.private_key), password=None)
    except (ValueError, TypeError):
        raise InvalidProviderConfig(field, "is not an unencrypted PEM private key") from None


def pem_bytes(text: str) -> bytes:
    """PEM text, forgiving keys pasted with literal `\\n` (as copied out of JSON files)."""
    return text.replace("\\n", "\n").strip().encode()


SPECS: dict[str, ProviderSpec] = {
    "smtp": ProviderSpec(("email",), SmtpCredentials, SmtpOptions, 10.0, 20),
    "sendgrid": ProviderSpec(("email",), SendgridCredentials, SendgridOptions, 100.0, 200),
    "mailgun": ProviderSpec(("email",), MailgunCredentials, MailgunOptions, 100.0, 200),
    # SES: 14 messages a second is a common production quota (the sandbox allows 1/s); an
    # account's own quota is in its console, and the tenant sets it here.
    "ses": ProviderSpec(("email",), SesCredentials, SesOptions, 14.0, 14, _check_ses),
    # Postmark publishes no hard send rate; about 50 requests a second is what it sustains.
    "postmark": ProviderSpec(
        ("email",),
        PostmarkCredentials,
        PostmarkOptions,
        50.0,
        50,
        _check_postmark,
        credentials_schema=POSTMARK_WEBHOOK_PAIR,
    ),
    # Twilio: a US long code sends one segment a second.
    "twilio": ProviderSpec(
        ("sms",),
        TwilioCredentials,
        TwilioOptions,
        1.0,
        1,
        _check_twilio,
        {
            "anyOf": [
                {"required": [name], "properties": {name: {"type": "string"}}}
                for name in ("from_number", "messaging_service_sid")
            ]
        },
    ),
    # FCM: 600k messages a minute per project.
    "fcm": ProviderSpec(("push",), FcmCredentials, Empty, 10_000.0, 1_000, _check_fcm),
    "apns": ProviderSpec(("push",), ApnsCredentials, ApnsOptions, 1_000.0, 1_000, _check_apns),
    "webhook": ProviderSpec(("webhook",), WebhookCredentials, Empty, 50.0, 100, _check_webhook),
    "sandbox": ProviderSpec(CHANNELS, Empty, Empty, 1_000.0, 1_000),
}


@dataclass(frozen=True)
class Normalized:
    credentials: dict[str, Any]
    options: dict[str, Any]
    generated_secret: str | None  # a webhook secret made for the tenant: show it once


def normalize(
    provider: str, channel: str, credentials: dict[str, Any], options: dict[str, Any]
) -> Normalized:
    """Validate a provider's input; return what to store, with unknown service-account
    fields dropped and a webhook secret generated when none was given."""
    spec = SPECS.get(provider)
    if spec is None:
        raise InvalidProviderConfig("provider", f"must be one of {', '.join(PROVIDERS)}")
    if channel not in spec.channels:
        raise InvalidProviderConfig(
            "channel", f"{provider} delivers {' or '.join(spec.channels)}, not {channel}"
        )
    if provider == "fcm" and isinstance(credentials.get("service_account"), str):
        credentials = {**credentials, "service_account": _json_object(credentials)}
    typed_credentials = _convert("credentials", credentials, spec.credentials)
    typed_options = _convert("options", options, spec.options)
    spec.check(typed_credentials, typed_options)
    stored = msgspec.to_builtins(typed_credentials)
    generated = None
    if provider == "webhook" and not stored.get("secret"):
        stored["secret"] = generated = generate_secret()
    return Normalized(stored, msgspec.to_builtins(typed_options), generated)


def read(values: dict[str, Any], kind: type[S]) -> S:
    """Stored values back as their Struct (for the adapters)."""
    return msgspec.convert(values, kind)


def _json_object(credentials: dict[str, Any]) -> Any:
    # The service account may be pasted as the JSON file's text rather than as an object.
    try:
        return json.loads(credentials["service_account"])
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the stack
        raise InvalidProviderConfig(
            "credentials.service_account", "must be the service-account JSON"
        ) from None


def _convert(prefix: str, values: dict[str, Any], kind: type[S]) -> S:
    try:
        return msgspec.convert(values, kind)
    except msgspec.ValidationError as error:
        field, message = _located(str(error))
        raise InvalidProviderConfig(prefix + field, message) from None


def _located(text: str) -> tuple[str, str]:
    """msgspec's "… - at `$.a.b`" message as (".a.b", "…"), naming missing/unknown fields."""
    message, _, at = text.partition(" - at `$")
    path = at.rstrip("`")
    for marker, says in (
        ("missing required field `", "is required"),
        ("contains unknown field `", "is not a known field"),
    ):
        if marker in message:
            return f"{path}.{message.split(marker, 1)[1].rstrip('`')}", says
    return path, message
