"""A test message through one provider config, to an address a tenant's member types.

"Send a test" on the providers page: does this account, with these credentials, deliver?
The message goes straight through the config's adapter, once, and the provider's answer is
shown as the delivery engine would classify it. It is not a notification: no message row,
no retry, no failover to another provider (the point is to try this one).

Still, what protects the tenant's accounts applies:
- in test mode the sandbox answers, as for every test send (no real provider is called);
- a token is taken from the tenant's send bucket and the provider account's bucket
  (app/ratelimit/buckets.py), so a member clicking away cannot exceed the account's rate;
- an address suppressed for the channel (a hard bounce, a complaint) is refused;
- the send is bounded in time, and audited without the address (personal data).
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from app.audit import service as audit
from app.auth import roles
from app.crypto import DecryptionError, Keyring
from app.delivery.routing import provider_burst
from app.ids import uuid7
from app.providers import http as provider_http
from app.providers.base import OutboundMessage, SendResult
from app.providers.models import ProviderConfig
from app.providers.service import build_adapter, open_credentials, route_for, sandbox_route
from app.ratelimit.buckets import TokenBuckets, provider_bucket, tenant_bucket
from app.recipients.suppressions import suppressed
from app.recipients.validation import RecipientInvalid, check_suppression_address
from app.settings import Settings
from app.templates.content import (
    Content,
    EmailContent,
    InboxContent,
    PushContent,
    SmsContent,
    WebhookContent,
)
from app.tenants.plans import limits_for

SEND_TIMEOUT = 20.0  # seconds: a provider slower than this fails the test
SUBJECT = "Test message from Herald"
TEXT = "This is a test message sent from Herald's dashboard to check a provider account."


class ProbeRefused(ValueError):
    """The test was not sent; `field` names the input at fault ("" for none in particular)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True)
class ProbeOutcome:
    provider: str  # the provider that answered ("sandbox" in test mode)
    result: SendResult
    sandbox: bool


def test_content(channel: str, config_name: str) -> Content:
    """What a test message says on each channel."""
    if channel == "email":
        return EmailContent(subject=SUBJECT, text=f"{TEXT}\n\nProvider: {config_name}")
    if channel == "sms":
        return SmsContent(text=f"Herald test message ({config_name})")
    if channel == "push":
        return PushContent(title=SUBJECT, body=f"Provider: {config_name}")
    if channel == "webhook":
        return WebhookContent(body={"type": "herald.test", "provider": config_name})
    return InboxContent(title=SUBJECT, body=TEXT)


async def send_test(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    mode: str,
    plan: str,
    config: ProviderConfig,
    address: str,
    actor: str,
    keyring: Keyring,
    buckets: TokenBuckets,
    settings: Settings,
    role: str | None = None,
) -> ProbeOutcome:
    """Send one test message through `config` (the tenant's) to `address`; audited.

    ProbeRefused when the address is invalid or suppressed, the credentials cannot be
    opened, or the rate limit has no token now. `role`: the acting member's."""
    roles.require(role, "send_test")
    if config.tenant_id != tenant_id:
        raise ProbeRefused("", "no such provider config")
    try:
        key = check_suppression_address(config.channel, address)
    except RecipientInvalid as invalid:
        raise ProbeRefused("address", invalid.message) from None
    hit = await suppressed(
        session, tenant_id=tenant_id, mode=mode, pairs=[(config.channel, key)], keyring=keyring
    )
    if hit:
        raise ProbeRefused("address", "this address is suppressed on this channel")
    sandbox = mode != "live"
    if sandbox:
        route = sandbox_route(config.channel)
    else:
        try:
            route = route_for(config, open_credentials(config, keyring))
        except DecryptionError:
            raise ProbeRefused(
                "", "the stored credentials cannot be decrypted: enter them again"
            ) from None
    limits = limits_for(plan)
    wanted = [tenant_bucket(tenant_id, mode, limits)]
    if route.config_id is not None:
        # The delivery engine's own bucket for the account, with its parameters.
        burst = provider_burst(route)
        wanted.append(provider_bucket(tenant_id, route.config_id, route.rate_per_second, burst))
    grant = await buckets.take(wanted, 1)
    if grant.granted < 1:
        raise ProbeRefused("", f"rate limited: try again in {max(1, round(grant.wait))} s")
    message_id = uuid7()
    message = OutboundMessage(
        message_id=message_id,
        tenant_id=tenant_id,
        notification_id=message_id,
        channel=config.channel,
        address=address.strip(),
        content=test_content(config.channel, config.name),
        headers={},
    )
    async with provider_http.new_client() as client:
        adapter = build_adapter(route, http=client, settings=settings)
        try:
            async with asyncio.timeout(SEND_TIMEOUT):
                result = await adapter.send(message)
        except TimeoutError:
            result = SendResult(ok=False, error_class="transient", error="no answer in time")
    await audit.append(
        session,
        tenant_id=tenant_id,
        actor=actor,
        action="provider.test_sent",
        target=str(config.id),
        details={
            "channel": config.channel,
            "provider": route.provider,
            "mode": mode,
            "ok": result.ok,
            "error_class": result.error_class,
            "status_code": result.status_code,
        },
    )
    return ProbeOutcome(route.provider, result, sandbox)
