"""What the adapter tests share: settings, contents, the outbound message, an adapter built
as the worker builds it, and the check of a failed send."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from app.ids import uuid7
from app.providers.base import OutboundMessage, ProviderAdapter, SendResult
from app.providers.credentials import normalize
from app.providers.service import ProviderRoute, build_adapter
from app.settings import Settings, load_settings
from app.templates.content import (
    Content,
    EmailContent,
    PushContent,
    SmsContent,
    WebhookContent,
)

OPEN = load_settings({"HERALD_ENV": "test", "HERALD_ALLOW_PRIVATE_URLS": "true"})
STRICT = load_settings({"HERALD_ENV": "test", "HERALD_ALLOW_PRIVATE_URLS": "false"})

EMAIL = EmailContent(subject="Your code", text="Code: 1234", html="<p>Code: <b>1234</b></p>")
SMS = SmsContent(text="Your code is 1234")
PUSH = PushContent(title="Order shipped", body="Arriving Tuesday", data={"order": "42"})
HOOK = WebhookContent(body={"event": "order.shipped", "order": 42})
SENDER = {"from_email": "hello@acme.test", "from_name": "Acme"}
DEVICE = "a1b2c3d4" * 8  # an APNs device token
# The headers delivery adds to non-critical e-mail (app/unsubscribe/links.py), at their real
# length: a token of 83 characters, longer than a header line folded at 78.
UNSUBSCRIBE_TOKEN = (
    "Kmhel2ywD_sqQYxF56SNNxRJGmMb8RmflxTWRwaUVmkNOQIBKW1hcmtldGluZ9B1Ucdu9t_NbwELMM6OAhs"
)
UNSUBSCRIBE_TARGETS = (
    f"<https://herald.test/u/{UNSUBSCRIBE_TOKEN}>, "
    f"<mailto:unsubscribe@herald.test?subject=unsubscribe-{UNSUBSCRIBE_TOKEN}>"
)
UNSUBSCRIBE = {
    "List-Unsubscribe": UNSUBSCRIBE_TARGETS,
    "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
}


def outbound(
    channel: str, address: str, content: Content, headers: dict[str, str] | None = None
) -> OutboundMessage:
    return OutboundMessage(
        message_id=uuid7(),
        tenant_id=uuid7(),
        notification_id=uuid7(),
        channel=channel,
        address=address,
        content=content,
        headers=headers or {},
    )


def adapter_for(
    provider: str,
    channel: str,
    credentials: dict[str, Any],
    options: dict[str, Any],
    http: httpx.AsyncClient,
    settings: Settings = OPEN,
) -> ProviderAdapter:
    """Through the real path: validated as the API validates, built as the worker builds."""
    stored = normalize(provider, channel, credentials, options)
    route = ProviderRoute(
        uuid7(), provider, channel, 0, 10.0, 10, stored.credentials, stored.options
    )
    return build_adapter(route, http=http, settings=settings)


def assert_failure(
    result: SendResult,
    error_class: str,
    status_code: int | None,
    *,
    suppress: str | None = None,
    retry_after: float | None = None,
) -> None:
    assert not result.ok, result
    assert (result.error_class, result.status_code) == (error_class, status_code), result
    assert result.suppress == suppress, result
    if retry_after is not None:
        assert result.retry_after == pytest.approx(retry_after, abs=2), result
    assert result.error and len(result.error) <= 300
