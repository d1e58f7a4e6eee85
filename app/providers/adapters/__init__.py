"""One adapter per provider, each speaking one provider's protocol (see app/providers/base.py).

`build` turns a route (provider, decrypted credentials, options) into a ready adapter.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import msgspec

from app.providers import credentials as specs
from app.providers.adapters import (
    apns,
    fcm,
    inbox,
    mailgun,
    postmark,
    sandbox,
    sendgrid,
    ses,
    smtp,
    twilio,
    webhook,
)
from app.providers.base import OutboundMessage, ProviderAdapter, SendResult, failed
from app.settings import Settings

# HERALD_PROVIDER_BASE_URLS key for Google's OAuth2 endpoint (FCM's token exchange).
GOOGLE_OAUTH = "google_oauth"

Builder = Callable[
    [dict[str, object], dict[str, object], httpx.AsyncClient, Settings], ProviderAdapter
]


class MisconfiguredAdapter:
    """Stands in when stored values no longer read as the provider's Structs: every send
    fails as `config`, so the breaker trips and the tenant is told, instead of a crash."""

    def __init__(self, provider: str, channel: str, reason: str) -> None:
        self.provider = provider
        self.channel = channel
        self.reason = reason

    async def send(self, message: OutboundMessage) -> SendResult:
        return failed("config", f"{self.provider} settings are invalid: {self.reason}")


def _base(settings: Settings, provider: str) -> str | None:
    return settings.provider_base_urls.get(provider)


def _smtp(
    creds: dict[str, object], opts: dict[str, object], http: httpx.AsyncClient, settings: Settings
) -> ProviderAdapter:
    return smtp.SmtpAdapter(
        specs.read(creds, specs.SmtpCredentials),
        specs.read(opts, specs.SmtpOptions),
        allow_private=settings.allow_private_urls,
    )


def _sendgrid(
    creds: dict[str, object], opts: dict[str, object], http: httpx.AsyncClient, settings: Settings
) -> ProviderAdapter:
    return sendgrid.SendgridAdapter(
        specs.read(creds, specs.SendgridCredentials),
        specs.read(opts, specs.SendgridOptions),
        http=http,
        base_url=_base(settings, "sendgrid") or sendgrid.BASE_URL,
    )


def _mailgun(
    creds: dict[str, object], opts: dict[str, object], http: httpx.AsyncClient, settings: Settings
) -> ProviderAdapter:
    return mailgun.MailgunAdapter(
        specs.read(creds, specs.MailgunCredentials),
        specs.read(opts, specs.MailgunOptions),
        http=http,
        base_url=_base(settings, "mailgun"),
    )


def _ses(
    creds: dict[str, object], opts: dict[str, object], http: httpx.AsyncClient, settings: Settings
) -> ProviderAdapter:
    return ses.SesAdapter(
        specs.read(creds, specs.SesCredentials),
        specs.read(opts, specs.SesOptions),
        http=http,
        base_url=_base(settings, "ses"),
    )


def _postmark(
    creds: dict[str, object], opts: dict[str, object], http: httpx.AsyncClient, settings: Settings
) -> ProviderAdapter:
    return postmark.PostmarkAdapter(
        specs.read(creds, specs.PostmarkCredentials),
        specs.read(opts, specs.PostmarkOptions),
        http=http,
        base_url=_base(settings, "postmark") or postmark.BASE_URL,
    )


def _twilio(
    creds: dict[str, object], opts: dict[str, object], http: httpx.AsyncClient, settings: Settings
) -> ProviderAdapter:
    return twilio.TwilioAdapter(
        specs.read(creds, specs.TwilioCredentials),
        specs.read(opts, specs.TwilioOptions),
        http=http,
        base_url=_base(settings, "twilio") or twilio.BASE_URL,
    )


def _fcm(
    creds: dict[str, object], opts: dict[str, object], http: httpx.AsyncClient, settings: Settings
) -> ProviderAdapter:
    oauth = _base(settings, GOOGLE_OAUTH)
    return fcm.FcmAdapter(
        specs.read(creds, specs.FcmCredentials),
        http=http,
        base_url=_base(settings, "fcm") or fcm.BASE_URL,
        token_url=f"{oauth}/token" if oauth else fcm.TOKEN_URL,
    )


def _apns(
    creds: dict[str, object], opts: dict[str, object], http: httpx.AsyncClient, settings: Settings
) -> ProviderAdapter:
    return apns.ApnsAdapter(
        specs.read(creds, specs.ApnsCredentials),
        specs.read(opts, specs.ApnsOptions),
        http=http,
        base_url=_base(settings, "apns"),
    )


def _webhook(
    creds: dict[str, object], opts: dict[str, object], http: httpx.AsyncClient, settings: Settings
) -> ProviderAdapter:
    return webhook.WebhookAdapter(
        specs.read(creds, specs.WebhookCredentials),
        http=http,
        allow_private=settings.allow_private_urls,
    )


BUILDERS: dict[str, Builder] = {
    "smtp": _smtp,
    "sendgrid": _sendgrid,
    "mailgun": _mailgun,
    "ses": _ses,
    "postmark": _postmark,
    "twilio": _twilio,
    "fcm": _fcm,
    "apns": _apns,
    "webhook": _webhook,
}


def build(
    provider: str,
    channel: str,
    credentials: dict[str, object],
    options: dict[str, object],
    *,
    http: httpx.AsyncClient,
    settings: Settings,
) -> ProviderAdapter:
    if provider == "sandbox":
        return sandbox.SandboxAdapter(channel)
    if provider == "inbox":
        return inbox.InboxAdapter()
    builder = BUILDERS.get(provider)
    if builder is None:
        raise ValueError(f"no adapter for provider {provider!r}")
    try:
        return builder(credentials, options, http, settings)
    except msgspec.ValidationError as error:
        return MisconfiguredAdapter(provider, channel, str(error))
