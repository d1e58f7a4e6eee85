"""What every provider adapter takes and returns: the message out, the result back.

Adapters know nothing of tenants' data beyond the message they are handed. They never raise
for a provider's or the network's failure: every outcome is a `SendResult` whose error class
tells the delivery engine what to do next (see docs/api/providers.md, "Error classes").
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Literal, Protocol

from app.templates.content import Content

ErrorClass = Literal["transient", "rate_limited", "permanent", "config"]
# Why the provider says never to send to this address again (a suppression's reason).
DeadAddress = Literal["hard_bounce", "unsubscribed", "invalid_address", "unregistered_device"]

ERROR_TEXT_LIMIT = 300


@dataclass(frozen=True)
class OutboundMessage:
    message_id: uuid.UUID  # passed to providers as idempotency key / custom header / webhook-id
    tenant_id: uuid.UUID
    notification_id: uuid.UUID
    channel: str
    address: str  # email | E.164 phone | "fcm:<token>" / "apns:<token>" | webhook URL
    content: Content
    headers: dict[str, str]  # extra e-mail headers (e.g. List-Unsubscribe), may be empty


@dataclass(frozen=True)
class SendResult:
    ok: bool
    provider_message_id: str | None = None
    error_class: ErrorClass | None = None
    status_code: int | None = None  # HTTP status, SMTP reply code, or provider error code
    error: str | None = None  # short, safe to show the tenant (no secrets)
    retry_after: float | None = None  # seconds, from Retry-After / provider hints
    final: bool = False  # no retry can succeed, whatever the error class says
    suppress: DeadAddress | None = None  # the provider says this address is dead, and why


class ProviderAdapter(Protocol):
    provider: str
    channel: str

    async def send(self, message: OutboundMessage) -> SendResult:
        """Deliver one message; timeouts and connection errors come back as `transient`."""
        ...


def sent(provider_message_id: str | None, status_code: int | None = None) -> SendResult:
    return SendResult(ok=True, provider_message_id=provider_message_id, status_code=status_code)


def failed(
    error_class: ErrorClass,
    error: str,
    *,
    status_code: int | None = None,
    retry_after: float | None = None,
    suppress: DeadAddress | None = None,
) -> SendResult:
    return SendResult(
        ok=False,
        error_class=error_class,
        status_code=status_code,
        error=short(error),
        retry_after=retry_after,
        suppress=suppress,
    )


def short(text: str, limit: int = ERROR_TEXT_LIMIT) -> str:
    """One line, at most `limit` characters: error texts end up in lists and dashboards."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def wrong_content(adapter: ProviderAdapter, message: OutboundMessage) -> SendResult:
    """The message carries content of another channel: a bug upstream, never worth a retry."""
    kind = type(message.content).__name__
    return failed("permanent", f"{adapter.provider} cannot send {kind} ({adapter.channel} only)")
