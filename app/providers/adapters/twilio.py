"""SMS through Twilio's Messages resource (`POST /2010-04-01/Accounts/{sid}/Messages.json`).

Form data, basic auth `account_sid:auth_token`; 201 = accepted, with the message's `sid`.
Twilio offers no idempotency key for Messages; when a status callback is configured the
message id rides on its URL (`?herald_message_id=`) so that receipts find their message.
Errors come as JSON with Twilio's numeric `code`, which decides the class (table below).
"""

from __future__ import annotations

from urllib.parse import urlencode

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
from app.providers.credentials import TwilioCredentials, TwilioOptions
from app.providers.http import class_of_status, json_object, network_failure, retry_after
from app.templates.content import SmsContent

BASE_URL = "https://api.twilio.com"

# Twilio error codes (https://www.twilio.com/docs/api/errors) → error class.
CODES: dict[int, ErrorClass] = {
    21211: "permanent",  # invalid To number
    21612: "permanent",  # cannot route to this number
    21614: "permanent",  # To is not a mobile number
    21610: "permanent",  # the recipient replied STOP: suppress
    20429: "rate_limited",  # too many requests
    30001: "transient",  # queue overflow
    20003: "config",  # authentication failed
    21606: "config",  # From is not a valid, SMS-capable number of this account
    21608: "config",  # trial account: To is not verified
}
# Codes that say the number itself is dead for us, and why it is suppressed.
DEAD_NUMBER_CODES: dict[int, DeadAddress] = {
    21211: "invalid_address",
    21614: "invalid_address",
    21610: "unsubscribed",
}


def form(message: OutboundMessage, content: SmsContent, options: TwilioOptions) -> dict[str, str]:
    fields = {"To": message.address, "Body": content.text}
    if options.messaging_service_sid:
        fields["MessagingServiceSid"] = options.messaging_service_sid
    if options.from_number:
        fields["From"] = options.from_number
    if options.status_callback:
        separator = "&" if "?" in options.status_callback else "?"
        query = urlencode({"herald_message_id": str(message.message_id)})
        fields["StatusCallback"] = f"{options.status_callback}{separator}{query}"
    return fields


def result(response: httpx.Response) -> SendResult:
    status = response.status_code
    body = json_object(response)
    if 200 <= status < 300:
        sid = body.get("sid")
        return sent(sid if isinstance(sid, str) else None, status)
    code = body.get("code") if isinstance(body.get("code"), int) else None
    error_class = CODES.get(code, class_of_status(status)) if code else class_of_status(status)
    text = f"Twilio {code or status}: {body.get('message', '')}".rstrip(": ")
    return failed(
        error_class,
        text,
        status_code=code or status,
        retry_after=retry_after(response.headers),
        suppress=DEAD_NUMBER_CODES.get(code) if code else None,
    )


class TwilioAdapter:
    provider = "twilio"
    channel = "sms"

    def __init__(
        self,
        credentials: TwilioCredentials,
        options: TwilioOptions,
        *,
        http: httpx.AsyncClient,
        base_url: str = BASE_URL,
    ) -> None:
        self.credentials = credentials
        self.options = options
        self.http = http
        self.base_url = base_url

    async def send(self, message: OutboundMessage) -> SendResult:
        if not isinstance(message.content, SmsContent):
            return wrong_content(self, message)
        sid = self.credentials.account_sid
        try:
            response = await self.http.post(
                f"{self.base_url}/2010-04-01/Accounts/{sid}/Messages.json",
                data=form(message, message.content, self.options),
                auth=(sid, self.credentials.auth_token),
            )
        except httpx.HTTPError as error:
            return network_failure(error)
        return result(response)
