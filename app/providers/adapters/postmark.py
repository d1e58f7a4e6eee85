"""E-mail through Postmark's Email API (`POST /email`, JSON, header `X-Postmark-Server-Token`).

Postmark answers 200 with `ErrorCode` 0 when it accepts a message, and 422 with its own
`ErrorCode` when it refuses one. It has no idempotency key; the message id travels as
`Metadata.herald_message_id` (echoed in every webhook Postmark sends, so receipts find
their message) and as the `X-Herald-Message-Id` header of the e-mail.
"""

from __future__ import annotations

from email.utils import formataddr
from typing import Any

import httpx

from app.providers.base import (
    DeadAddress,
    ErrorClass,
    OutboundMessage,
    SendResult,
    failed,
    sent,
    wrong_content,
)
from app.providers.credentials import PostmarkCredentials, PostmarkOptions
from app.providers.http import class_of_status, json_object, network_failure, retry_after
from app.templates.content import EmailContent

BASE_URL = "https://api.postmarkapp.com"
RESERVED_HEADERS = frozenset({"x-herald-message-id", "from", "to", "subject", "reply-to"})

# Postmark's API error codes (https://postmarkapp.com/developer/api/overview#error-codes)
# that say more than the HTTP status: the class, and the suppression when the address is dead.
ERROR_CODES: dict[int, tuple[ErrorClass, DeadAddress | None]] = {
    300: ("permanent", "invalid_address"),  # invalid email request (an illegal address)
    406: ("permanent", "hard_bounce"),  # inactive recipient: it hard-bounced or complained
    10: ("config", None),  # bad or missing server token
    400: ("config", None),  # sender signature not found
    401: ("config", None),  # sender signature not confirmed
    405: ("config", None),  # not allowed to send (out of credits)
    412: ("config", None),  # account pending approval
    413: ("config", None),  # account may not send
    429: ("rate_limited", None),
}


def payload(
    message: OutboundMessage, content: EmailContent, options: PostmarkOptions
) -> dict[str, Any]:
    herald_id = str(message.message_id)
    headers = [
        {"Name": name, "Value": value}
        for name, value in message.headers.items()
        if name.lower() not in RESERVED_HEADERS
    ]
    headers.append({"Name": "X-Herald-Message-Id", "Value": herald_id})
    body: dict[str, Any] = {
        "From": formataddr((options.from_name or "", options.from_email)),
        "To": message.address,
        "Subject": content.subject,
    }
    if content.text is not None:
        body["TextBody"] = content.text
    if content.html is not None:
        body["HtmlBody"] = content.html
    if options.reply_to:
        body["ReplyTo"] = options.reply_to
    body |= {
        "Headers": headers,
        "MessageStream": options.message_stream,
        "Metadata": {"herald_message_id": herald_id},
    }
    return body


def result(response: httpx.Response) -> SendResult:
    status = response.status_code
    body = json_object(response)
    code = body.get("ErrorCode")
    code = code if isinstance(code, int) and not isinstance(code, bool) else None
    if 200 <= status < 300 and not code:
        message_id = body.get("MessageID")
        return sent(message_id if isinstance(message_id, str) else None, status)
    text = body.get("Message")
    error = f"Postmark {status}" + (f" ({code})" if code else "")
    if isinstance(text, str) and text:
        error += f": {text}"
    error_class, suppress = ERROR_CODES.get(code or 0, (None, None))
    if status == 429:
        error_class, suppress = "rate_limited", None
    return failed(
        error_class or class_of_status(status),
        error,
        # Postmark's own code where it gave one: it says more than 422.
        status_code=code or status,
        retry_after=retry_after(response.headers),
        suppress=suppress,
    )


class PostmarkAdapter:
    provider = "postmark"
    channel = "email"

    def __init__(
        self,
        credentials: PostmarkCredentials,
        options: PostmarkOptions,
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
                f"{self.base_url}/email",
                json=payload(message, message.content, self.options),
                headers={
                    "accept": "application/json",
                    "x-postmark-server-token": self.credentials.server_token,
                },
            )
        except httpx.HTTPError as error:
            return network_failure(error)
        return result(response)
