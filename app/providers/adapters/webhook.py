"""The webhook channel: POST the rendered JSON to the recipient's URL, Standard-Webhooks signed.

Headers `webhook-id` (our message id: the same on every retry, so receivers can dedupe),
`webhook-timestamp` and `webhook-signature` (see app/providers/standard_webhooks.py). The
URL goes through the SSRF guard and the request to the checked address (app/providers/
ssrf.py). Answers: any 2xx succeeds; a 3xx fails for good (redirects are not followed: they
would lead to an unchecked host); 410 Gone suppresses the URL; 429 slows down; 502/503/504
and other 5xx are retried, honouring Retry-After; other 4xx fail for good.
"""

from __future__ import annotations

import httpx
import msgspec

from app.providers import ssrf
from app.providers.base import OutboundMessage, SendResult, failed, sent, wrong_content
from app.providers.credentials import WebhookCredentials
from app.providers.http import network_failure, retry_after
from app.providers.standard_webhooks import signature_headers
from app.templates.content import WebhookContent

TIMEOUT = 15.0


def result(response: httpx.Response) -> SendResult:
    status = response.status_code
    wait = retry_after(response.headers)
    if 200 <= status < 300:
        return sent(None, status)
    if 300 <= status < 400:
        return failed("permanent", f"HTTP {status}: redirects are not followed", status_code=status)
    if status == 410:
        return failed(
            "permanent",
            "HTTP 410: the endpoint is gone",
            status_code=410,
            suppress="invalid_address",
        )
    if status == 429:
        return failed("rate_limited", "HTTP 429: slow down", status_code=429, retry_after=wait)
    if status >= 500:
        return failed("transient", f"HTTP {status}", status_code=status, retry_after=wait)
    return failed("permanent", f"HTTP {status}", status_code=status)


class WebhookAdapter:
    provider = "webhook"
    channel = "webhook"

    def __init__(
        self, credentials: WebhookCredentials, *, http: httpx.AsyncClient, allow_private: bool
    ) -> None:
        self.secret = credentials.secret
        self.http = http
        self.allow_private = allow_private

    async def send(self, message: OutboundMessage) -> SendResult:
        if not isinstance(message.content, WebhookContent):
            return wrong_content(self, message)
        if not self.secret:
            return failed("config", "the webhook provider has no signing secret")
        try:
            target = await ssrf.pin_url(message.address, allow_private=self.allow_private)
        except ssrf.UnsafeURL as error:
            return failed("permanent", f"URL refused: {error}")
        except ssrf.UnresolvableHost as error:
            return failed("transient", str(error))
        body = msgspec.json.encode(message.content.body)
        headers = {
            "content-type": "application/json",
            **signature_headers(self.secret, message_id=str(message.message_id), body=body),
        }
        try:
            response = await ssrf.send_pinned(
                self.http, "POST", target, headers=headers, content=body, request_timeout=TIMEOUT
            )
        except httpx.HTTPError as error:
            return network_failure(error)
        return result(response)
