"""E-mail through Amazon SES's v2 API (`POST /v2/email/outbound-emails`, SendEmail).

Each request is signed with AWS Signature Version 4 (botocore's signer, service `ses`, the
config's region) over the exact bytes sent. SES has no idempotency key; the message id
travels as the `herald_message_id` message tag (SES puts a message's tags in every event it
publishes through the configuration set, so receipts find their message) and as the
`X-Herald-Message-Id` header of the e-mail.
"""

from __future__ import annotations

import json
from email.utils import formataddr
from typing import Any

import httpx
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from app.providers.base import ErrorClass, OutboundMessage, SendResult, failed, sent, wrong_content
from app.providers.credentials import SesCredentials, SesOptions
from app.providers.http import class_of_status, json_object, network_failure, retry_after
from app.templates.content import EmailContent

PATH = "/v2/email/outbound-emails"
RESERVED_HEADERS = frozenset({"x-herald-message-id", "from", "to", "subject", "reply-to"})

# The error type SES names (x-amzn-errortype or the body's __type) → error class; other
# types fall back to the HTTP status.
ERROR_TYPES: dict[str, ErrorClass] = {
    "MessageRejected": "permanent",
    "BadRequestException": "permanent",
    # The account or its sender cannot send at all: no retry of this message helps.
    "MailFromDomainNotVerifiedException": "config",
    "AccountSuspendedException": "config",
    "SendingPausedException": "config",
    # The configuration set named in the options does not exist in this region.
    "NotFoundException": "config",
    "TooManyRequestsException": "rate_limited",
    "LimitExceededException": "rate_limited",
}


def regional_url(region: str) -> str:
    return f"https://email.{region}.amazonaws.com"


def payload(message: OutboundMessage, content: EmailContent, options: SesOptions) -> dict[str, Any]:
    herald_id = str(message.message_id)
    body: dict[str, Any] = {}
    if content.text is not None:
        body["Text"] = {"Data": content.text, "Charset": "UTF-8"}
    if content.html is not None:
        body["Html"] = {"Data": content.html, "Charset": "UTF-8"}
    headers = [
        {"Name": name, "Value": value}
        for name, value in message.headers.items()
        if name.lower() not in RESERVED_HEADERS
    ]
    headers.append({"Name": "X-Herald-Message-Id", "Value": herald_id})
    request: dict[str, Any] = {
        # formataddr writes a non-ASCII display name as an RFC 2047 word, as SES requires.
        "FromEmailAddress": formataddr((options.from_name or "", options.from_email)),
        "Destination": {"ToAddresses": [message.address]},
        "Content": {
            "Simple": {
                "Subject": {"Data": content.subject, "Charset": "UTF-8"},
                "Body": body,
                "Headers": headers,
            }
        },
        "EmailTags": [{"Name": "herald_message_id", "Value": herald_id}],
    }
    if options.reply_to:
        request["ReplyToAddresses"] = [options.reply_to]
    if options.configuration_set:
        request["ConfigurationSetName"] = options.configuration_set
    return request


def signed_headers(
    url: str, body: bytes, credentials: SesCredentials, region: str
) -> dict[str, str]:
    """The headers of a SigV4-signed POST of `body` to `url`: content-type, X-Amz-Date and
    Authorization (the host, signed too, is the URL's, which httpx sends as is)."""
    request = AWSRequest(
        method="POST", url=url, data=body, headers={"content-type": "application/json"}
    )
    signer = SigV4Auth(
        Credentials(credentials.access_key_id, credentials.secret_access_key), "ses", region
    )
    signer.add_auth(request)
    return dict(request.headers.items())


def result(response: httpx.Response) -> SendResult:
    status = response.status_code
    body = json_object(response)
    if 200 <= status < 300:
        message_id = body.get("MessageId")
        return sent(message_id if isinstance(message_id, str) else None, status)
    kind = error_type(response, body)
    text = body.get("message") or body.get("Message") or ""
    error = f"SES {status}: {kind or ''} {text if isinstance(text, str) else ''}"
    error_class = ERROR_TYPES.get(kind or "") or class_of_status(status)
    return failed(
        error_class,
        error.strip(": "),
        status_code=status,
        retry_after=retry_after(response.headers),
    )


def error_type(response: httpx.Response, body: dict[str, Any]) -> str | None:
    """SES's name for the error: `MessageRejected` out of `MessageRejected:http://…` (the
    header) or `com.amazonaws…#MessageRejected` (the body)."""
    raw = response.headers.get("x-amzn-errortype") or body.get("__type")
    if not isinstance(raw, str) or not raw:
        return None
    return raw.split(":", 1)[0].rsplit("#", 1)[-1] or None


class SesAdapter:
    provider = "ses"
    channel = "email"

    def __init__(
        self,
        credentials: SesCredentials,
        options: SesOptions,
        *,
        http: httpx.AsyncClient,
        base_url: str | None = None,
    ) -> None:
        self.credentials = credentials
        self.options = options
        self.http = http
        self.url = f"{base_url or regional_url(options.region)}{PATH}"

    async def send(self, message: OutboundMessage) -> SendResult:
        if not isinstance(message.content, EmailContent):
            return wrong_content(self, message)
        # Signed over these exact bytes: they are sent as they are, not re-encoded by httpx.
        body = json.dumps(payload(message, message.content, self.options)).encode()
        headers = signed_headers(self.url, body, self.credentials, self.options.region)
        try:
            response = await self.http.post(self.url, content=body, headers=headers)
        except httpx.HTTPError as error:
            return network_failure(error)
        return result(response)
