"""Push to Apple devices through APNs' HTTP/2 provider API, with token-based auth.

`POST /3/device/{token}` over HTTP/2 (the client must be made with `http2=True`, as
`app.providers.http.new_client` does), `authorization: bearer <JWT>` where the JWT is
ES256-signed by the team's .p8 key (`iss` team id, `kid` key id) and reused for up to 50
minutes. `apns-id` carries our message id, which APNs echoes back and uses in its logs.
Errors come as `{"reason": "BadDeviceToken"}`; status and reason decide the class.
"""

from __future__ import annotations

import re
import time
from typing import Any

import httpx
import jwt

from app.providers.base import (
    ErrorClass,
    OutboundMessage,
    SendResult,
    failed,
    sent,
    wrong_content,
)
from app.providers.credentials import ApnsCredentials, ApnsOptions, pem_bytes
from app.providers.http import class_of_status, json_object, network_failure, retry_after
from app.providers.tokens import TokenCache, cache_key
from app.templates.content import PushContent

BASE_URLS = {
    "production": "https://api.push.apple.com",
    "sandbox": "https://api.sandbox.push.apple.com",
}
TOKEN_LIFETIME = 50 * 60  # Apple: tokens live an hour; refresh at most every 20 minutes
ADDRESS_PREFIX = "apns:"
DEVICE_TOKEN = re.compile(r"^[0-9a-fA-F]{32,200}$")

DEAD_TOKEN_REASONS = frozenset({"BadDeviceToken", "DeviceTokenNotForTopic", "Unregistered"})
# Errors of our configuration rather than of the message: the topic is not the key's app.
CONFIG_REASONS = frozenset({"BadTopic", "TopicDisallowed", "MissingTopic", "BadCertificate"})
STALE_TOKEN_REASON = "ExpiredProviderToken"  # noqa: S105 (a reason code, not a secret)

provider_tokens = TokenCache(margin=0.0)


def payload(content: PushContent, message: OutboundMessage) -> dict[str, Any]:
    # Custom keys sit beside "aps", which is Apple's; a tenant's "aps" key cannot replace it.
    custom = {key: value for key, value in content.data.items() if key != "aps"}
    return {
        **custom,
        "herald_message_id": str(message.message_id),
        "aps": {"alert": {"title": content.title, "body": content.body}},
    }


def classify(status: int, reason: str) -> ErrorClass:
    if reason in DEAD_TOKEN_REASONS or status == 410:
        return "permanent"
    if reason in CONFIG_REASONS:
        return "config"
    if reason == STALE_TOKEN_REASON:
        return "transient"  # the cached token is dropped: the retry signs a fresh one
    return class_of_status(status)


def result(response: httpx.Response) -> SendResult:
    status = response.status_code
    if status == 200:
        return sent(response.headers.get("apns-id"), status)
    reason = str(json_object(response).get("reason") or "")
    return failed(
        classify(status, reason),
        f"APNs {status}: {reason}".rstrip(": "),
        status_code=status,
        retry_after=retry_after(response.headers),
        suppress="unregistered_device" if reason in DEAD_TOKEN_REASONS or status == 410 else None,
    )


class ApnsAdapter:
    provider = "apns"
    channel = "push"

    def __init__(
        self,
        credentials: ApnsCredentials,
        options: ApnsOptions,
        *,
        http: httpx.AsyncClient,
        base_url: str | None = None,
    ) -> None:
        self.credentials = credentials
        self.options = options
        self.http = http
        self.base_url = base_url or BASE_URLS[options.environment]
        self.cache_key = cache_key(credentials.team_id, credentials.key_id, credentials.private_key)

    async def send(self, message: OutboundMessage) -> SendResult:
        if not isinstance(message.content, PushContent):
            return wrong_content(self, message)
        token = message.address.removeprefix(ADDRESS_PREFIX)
        if not message.address.startswith(ADDRESS_PREFIX) or not DEVICE_TOKEN.match(token):
            return failed("permanent", "not an APNs device token (expected apns:<hex token>)")
        try:
            headers = self._headers(message)
        except (ValueError, TypeError, jwt.PyJWTError):
            return failed("config", "cannot sign an APNs token with the configured key")
        try:
            response = await self.http.post(
                f"{self.base_url}/3/device/{token}",
                json=payload(message.content, message),
                headers=headers,
            )
        except httpx.HTTPError as error:
            return network_failure(error)
        if response.status_code == 403:
            # Expired or refused provider token: the next attempt signs a fresh one.
            provider_tokens.drop(self.cache_key)
        return result(response)

    def _headers(self, message: OutboundMessage) -> dict[str, str]:
        return {
            "authorization": f"bearer {self._provider_token()}",
            "apns-topic": self.options.topic,
            "apns-push-type": "alert",
            "apns-priority": "10",
            "apns-id": str(message.message_id),
        }

    def _provider_token(self) -> str:
        cached = provider_tokens.get(self.cache_key)
        if cached is not None:
            return cached
        token = jwt.encode(
            {"iss": self.credentials.team_id, "iat": int(time.time())},
            pem_bytes(self.credentials.private_key),
            algorithm="ES256",
            headers={"kid": self.credentials.key_id},
        )
        provider_tokens.put(self.cache_key, token, TOKEN_LIFETIME)
        return token
