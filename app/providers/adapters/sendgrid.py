"""E-mail through SendGrid's v3 Mail Send API (`POST /v3/mail/send`, 202 = queued).

SendGrid has no idempotency key; the message id travels as `custom_args.herald_message_id`
(echoed in every Event Webhook event, so receipts find their message) and as the
`X-Herald-Message-Id` header of the e-mail.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from app.providers.base import OutboundMessage, SendResult, failed, sent, wrong_content
from app.providers.credentials import ApiKeyCredentials, SendgridOptions
from app.providers.http import class_of_status, json_object, network_failure, retry_after
from app.templates.content import EmailContent

BASE_URL = "https://api.sendgrid.com"
RESERVED_HEADERS = frozenset({"x-herald-message-id", "from", "to", "subject", "reply-to"})


def payload(
    message: OutboundMessage, content: EmailContent, options: SendgridOptions
) -> dict[str, Any]:
    herald_id = str(message.message_id)
    sender: dict[str, str] = {"email": options.from_email}
    if options.from_name:
        sender["name"] = options.from_name
    body: dict[str, Any] = {
        "personalizations": [{"to": [{"email": message.address}]}],
        "from": sender,
        "subject": content.subject,
        # SendGrid requires text/plain before text/html.
        "content": [
            {"type": kind, "value": value}
            for kind, value in (("text/plain", content.text), ("text/html", content.html))
            if value is not None
        ],
        "headers": {
            **{k: v for k, v in message.headers.items() if k.lower() not in RESERVED_HEADERS},
            "X-Herald-Message-Id": herald_id,
        },
        "custom_args": {"herald_message_id": herald_id},
    }
    if options.reply_to:
        body["reply_to"] = {"email": options.reply_to}
    return body


def result(response: httpx.Response) -> SendResult:
    status = response.status_code
    if status == 202 or 200 <= status < 300:
        return sent(response.headers.get("x-message-id"), status)
    error = _error_text(response)
    if status == 429:
        return failed(
            "rate_limited", error, status_code=status, retry_after=_rate_limit_wait(response)
        )
    return failed(
        class_of_status(status),
        error,
        status_code=status,
        retry_after=retry_after(response.headers),
    )


def _error_text(response: httpx.Response) -> str:
    errors = json_object(response).get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        first = errors[0]
        field = f" ({first['field']})" if first.get("field") else ""
        return f"SendGrid {response.status_code}: {first.get('message', '')}{field}"
    return f"SendGrid {response.status_code}"


def _rate_limit_wait(response: httpx.Response) -> float | None:
    # X-RateLimit-Reset is the Unix time at which the window resets.
    reset = response.headers.get("x-ratelimit-reset")
    if reset and reset.isdigit():
        return max(float(reset) - time.time(), 0.0)
    return retry_after(response.headers)


class SendgridAdapter:
    provider = "sendgrid"
    channel = "email"

    def __init__(
        self,
        credentials: ApiKeyCredentials,
        options: SendgridOptions,
        *,
        http: httpx.AsyncClient,
        base_url: str = BASE_URL,
    ) -> None:
        self.credentials = credentials
        self.options = options
        self.http = http
        self.base_url = base_url

    async def send(self, message: OutboundMessage) -> SendResult:
        if not isinstance(message.content, EmailContent):
            return wrong_content(self, message)
        try:
            response = await self.http.post(
                f"{self.base_url}/v3/mail/send",
                json=payload(message, message.content, self.options),
                headers={"authorization": f"Bearer {self.credentials.api_key}"},
            )
        except httpx.HTTPError as error:
            return network_failure(error)
        return result(response)
