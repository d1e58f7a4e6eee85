"""The add/edit provider form, made from each provider's Structs (app/providers/credentials.py).

Each provider's options and credentials are msgspec Structs; the form shows one input per
field, of the kind its type calls for (a choice for a Literal, a number for an int, a list
as comma-separated text, a text area for a PEM key or a service-account JSON), and reads the
posted values back into the dicts the provider service validates. Credentials are write-only:
their inputs are never filled in, and on an edit an empty one keeps what is stored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec
import msgspec.inspect as mi
from litestar.datastructures import FormMultiDict

from admin_ui.pages import form_text
from app.providers.credentials import PROVIDERS, SPECS
from app.providers.service import MAX_BURST, MAX_NAME_LENGTH, MAX_PRIORITY, MAX_RATE

MAX_INPUT = 10_000  # the longest credential a provider takes (a PEM key)
PROVIDER_LABELS = {
    "smtp": "SMTP server",
    "sendgrid": "SendGrid",
    "mailgun": "Mailgun",
    "ses": "Amazon SES",
    "postmark": "Postmark",
    "twilio": "Twilio",
    "fcm": "Firebase Cloud Messaging",
    "apns": "Apple Push Notification service",
    "webhook": "Webhook (HTTP POST)",
    "sandbox": "Sandbox (no real delivery)",
}
CHOOSABLE = PROVIDERS  # the sandbox last


@dataclass(frozen=True)
class Input:
    """One input of the form: `name` is `options.<field>` or `credentials.<field>`."""

    name: str
    label: str
    kind: str  # text | number | select | list | textarea | secret
    required: bool
    choices: tuple[str, ...] = ()
    default: str = ""


@dataclass
class ProviderForm:
    """The form as shown or as posted, with what is wrong by input name ("" for the form)."""

    provider: str
    channel: str
    name: str = ""
    priority: str = "0"
    rate_per_second: str = ""
    burst: str = ""
    enabled: bool = True
    options: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def channels(self) -> tuple[str, ...]:
        return tuple(SPECS[self.provider].channels) if self.provider in SPECS else ()

    @property
    def option_inputs(self) -> list[Input]:
        return inputs("options", SPECS[self.provider].options)

    @property
    def credential_inputs(self) -> list[Input]:
        return inputs("credentials", SPECS[self.provider].credentials)


def _unwrap(kind: Any) -> tuple[Any, bool]:
    """The type itself, and whether None is allowed."""
    optional = False
    while True:
        if isinstance(kind, mi.Metadata):
            kind = kind.type
        elif isinstance(kind, mi.UnionType):
            members = [t for t in kind.types if not isinstance(t, mi.NoneType)]
            optional = optional or len(members) < len(kind.types)
            kind = members[0]
        else:
            return kind, optional


def inputs(prefix: str, struct: type[Any]) -> list[Input]:
    """The inputs of a provider's options or credentials Struct."""
    described = []
    for info in mi.type_info(struct).fields:  # type: ignore[attr-defined]
        kind, _ = _unwrap(info.type)
        label = info.name.replace("_", " ").capitalize()
        default = "" if info.default is msgspec.NODEFAULT or info.default is None else info.default
        choices: tuple[str, ...] = ()
        if prefix == "credentials":
            big = isinstance(kind, mi.StructType) or "private_key" in info.name
            shown = "textarea" if big else "secret"
        elif isinstance(kind, mi.LiteralType):
            shown, choices = "select", tuple(str(v) for v in kind.values)
        elif isinstance(kind, mi.IntType):
            shown = "number"
        elif isinstance(kind, mi.ListType):
            shown = "list"
        else:
            shown = "text"
        described.append(
            Input(
                name=f"{prefix}.{info.name}",
                label=label,
                kind=shown,
                required=info.required,
                choices=choices,
                default=", ".join(default) if isinstance(default, list) else str(default),
            )
        )
    return described


def blank(provider: str, channel: str = "") -> ProviderForm:
    spec = SPECS[provider]
    form = ProviderForm(
        provider=provider,
        channel=channel if channel in spec.channels else spec.channels[0],
        name=PROVIDER_LABELS[provider],
        rate_per_second=f"{spec.rate_per_second:g}",
        burst=str(spec.burst),
    )
    form.options = {i.name: i.default for i in form.option_inputs}
    return form


def of_config(config: Any) -> ProviderForm:
    """The edit form of a stored config: its options shown, its credentials never."""
    form = ProviderForm(
        provider=config.provider,
        channel=config.channel,
        name=config.name,
        priority=str(config.priority),
        rate_per_second=f"{config.rate_per_second:g}",
        burst=str(config.burst),
        enabled=config.enabled,
    )
    for item in form.option_inputs:
        value = config.options.get(item.name.removeprefix("options."))
        if isinstance(value, list):
            value = ", ".join(str(v) for v in value)
        form.options[item.name] = "" if value is None else str(value)
    return form


@dataclass(frozen=True)
class Posted:
    form: ProviderForm
    name: str
    priority: int
    rate_per_second: float
    burst: int
    options: dict[str, Any]
    credentials: dict[str, Any]  # only the inputs filled in


def read(form_data: FormMultiDict, provider: str, channel: str | None = None) -> Posted:
    """The posted form, checked for shape and bounds (the service checks the rest)."""
    posted_channel = channel if channel is not None else form_text(form_data, "channel")
    form = ProviderForm(provider=provider, channel=posted_channel)
    errors = form.errors
    form.name = form_text(form_data, "name").strip()[: MAX_NAME_LENGTH + 1]
    if not form.name or len(form.name) > MAX_NAME_LENGTH:
        errors["name"] = f"A name of 1 to {MAX_NAME_LENGTH} characters."
    if posted_channel not in form.channels:
        errors["channel"] = f"{provider} delivers {' or '.join(form.channels)}."
    form.priority = form_text(form_data, "priority").strip()[:12]
    form.rate_per_second = form_text(form_data, "rate_per_second").strip()[:24]
    form.burst = form_text(form_data, "burst").strip()[:12]
    form.enabled = form_text(form_data, "enabled") == "on"
    priority = _number(form.priority, int, 0, MAX_PRIORITY, "priority", errors)
    rate = _number(form.rate_per_second, float, 0.001, MAX_RATE, "rate_per_second", errors)
    burst = _number(form.burst, int, 1, MAX_BURST, "burst", errors)
    options: dict[str, Any] = {}
    for item in form.option_inputs:
        text = form_text(form_data, item.name).strip()[:MAX_INPUT]
        form.options[item.name] = text
        key = item.name.removeprefix("options.")
        if not text:
            continue
        if item.kind == "number":
            if not text.isdigit() or len(text) > 9:
                errors[item.name] = "A whole number."
                continue
            options[key] = int(text)
        elif item.kind == "list":
            options[key] = [part.strip() for part in text.split(",") if part.strip()][:50]
        else:
            options[key] = text
    credentials: dict[str, Any] = {}
    for item in form.credential_inputs:
        text = form_text(form_data, item.name)
        if len(text) > MAX_INPUT:
            errors[item.name] = f"At most {MAX_INPUT:,} characters."
        elif text.strip():
            credentials[item.name.removeprefix("credentials.")] = text.strip()
    return Posted(form, form.name, int(priority), float(rate), int(burst), options, credentials)


def _number(
    text: str,
    kind: type[int] | type[float],
    low: float,
    high: float,
    name: str,
    errors: dict[str, str],
) -> float:
    try:
        value = kind(text)
    except ValueError:
        errors[name] = f"A number from {low:g} to {high:g}."
        return low
    if not low <= value <= high:
        errors[name] = f"A number from {low:g} to {high:g}."
        return low
    return value
