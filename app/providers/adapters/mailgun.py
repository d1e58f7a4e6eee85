"""E-mail through Mailgun's Messages API (`POST /v3/{domain}/messages`, form data).

Basic auth `api:<key>`. The region picks the endpoint (US or EU; a domain lives in one).
The message id travels as the `X-Herald-Message-Id` header (`h:`) and as the user variable
`herald_message_id` (`v:`), which Mailgun echoes in its webhooks.
"""

from __future__ import annotations

from email.utils import formataddr
from urllib.parse import quote

import httpx

from app.providers.base import OutboundMessage, SendResult, failed, sent, wrong_content
from app.providers.credentials import ApiKeyCredentials, MailgunOptions
from app.providers.http import class_of_status, json_object, network_failure, retry_after
from app.templates.content import EmailContent

BASE_URLS = {"us": "https://api.mailgun.net", "eu": "https://api.eu.mailgun.net"}
RESERVED_HEADERS = frozenset({"x-herald-message-id", "from", "to", "subject", "reply-to"})


def form(
    message: OutboundMessage, content: EmailContent, options: MailgunOptions
) -> dict[str, str]:
    fields = [
        ("from", formataddr((options.from_name or "", options.from_email))),
        ("to", message.address),
        ("subject", content.subject),
    ]
    if content.text is not None:
        fields.append(("text", content.text))
    if content.html is not None:
        fields.append(("html", content.html))
    if options.reply_to:
        fields.append(("h:Reply-To", options.reply_to))
    fields += [
        (f"h:{name}", value)
        for name, value in message.headers.items()
        if name.lower() not in RESERVED_HEADERS
    ]
    fields += [
        ("h:X-Herald-Message-Id", str(message.message_id)),
        ("v:herald_message_id", str(message.message_id)),
    ]
    return dict(fields)


def result(response: httpx.Response) -> SendResult:
    status = response.status_code
    body = json_object(response)
    if 200 <= status < 300:
        provider_id = body.get("id")
        return sent(provider_id.strip("<>") if isinstance(provider_id, str) else None, status)
    text = f"Mailgun {status}: {body.get('message', '')}".rstrip(": ")
    # 404: the domain is not on this account (or not in this region): the config is wrong.
    error_class = "config" if status == 404 else class_of_status(status)
    return failed(error_class, text, status_code=status, retry_after=retry_after(response.headers))


class MailgunAdapter:
    provider = "mailgun"
    channel = "email"

    def __init__(
        self,
        credentials: ApiKeyCredentials,
        options: MailgunOptions,
        *,
        http: httpx.AsyncClient,
        base_url: str | None = None,
    ) -> None:
        self.credentials = credentials
        self.options = options
        self.http = http
        self.base_url = base_url or BASE_URLS[options.region]

    async def send(self, message: OutboundMessage) -> SendResult:
        if not isinstance(message.content, EmailContent):
            return wrong_content(self, message)
        url = f"{self.base_url}/v3/{quote(self.options.domain, safe='')}/messages"
        try:
            response = await self.http.post(
                url,
                data=form(message, message.content, self.options),
                auth=("api", self.credentials.api_key),
            )
        except httpx.HTTPError as error:
            return network_failure(error)
        return result(response)
