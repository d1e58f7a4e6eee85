"""Push to Android/web through Firebase Cloud Messaging's HTTP v1 API.

Authentication: the service account signs a JWT (RS256, scope firebase.messaging) which is
exchanged at Google's token endpoint for an access token (OAuth2 JWT bearer grant, RFC
7523); the token is cached until shortly before it expires. Then
`POST /v1/projects/{project}/messages:send` with `{"message": {"token": …}}`.

FCM has no idempotency key; the message id is added to the data payload as
`herald_message_id`, so an app can drop a duplicate. Errors carry an FCM `errorCode` in
`error.details`, which decides the class (table below), else the canonical `error.status`.
"""

from __future__ import annotations

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
from app.providers.credentials import FcmCredentials, pem_bytes
from app.providers.http import class_of_status, json_object, network_failure, retry_after
from app.providers.tokens import TokenCache, cache_key
from app.templates.content import PushContent

BASE_URL = "https://fcm.googleapis.com"
TOKEN_URL = "https://oauth2.googleapis.com/token"  # noqa: S105 (a URL, not a secret)
SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ASSERTION_LIFETIME = 3600
ADDRESS_PREFIX = "fcm:"

CODES: dict[str, ErrorClass] = {
    "UNREGISTERED": "permanent",  # the app was uninstalled or the token expired: suppress
    "INVALID_ARGUMENT": "permanent",  # bad token or payload (over 4096 bytes)
    "SENDER_ID_MISMATCH": "permanent",  # the token belongs to another project
    "QUOTA_EXCEEDED": "rate_limited",
    "UNAVAILABLE": "transient",
    "INTERNAL": "transient",
    "THIRD_PARTY_AUTH_ERROR": "config",  # the APNs / web push credentials in Firebase
    "PERMISSION_DENIED": "config",  # the service account may not send for this project
    "UNAUTHENTICATED": "config",
}

access_tokens = TokenCache()


class TokenRefused(Exception):
    """The token endpoint did not give an access token; `result` says what to do."""

    def __init__(self, result: SendResult) -> None:
        super().__init__(result.error)
        self.result = result


def payload(token: str, content: PushContent, message: OutboundMessage) -> dict[str, Any]:
    data = {**content.data, "herald_message_id": str(message.message_id)}
    return {
        "message": {
            "token": token,
            "notification": {"title": content.title, "body": content.body},
            "data": data,
        }
    }


def error_reason(body: dict[str, Any]) -> str | None:
    """The FcmError `errorCode` if given, else the canonical status (e.g. UNAVAILABLE)."""
    error = body.get("error")
    if not isinstance(error, dict):
        return None
    for detail in error.get("details") or []:
        if isinstance(detail, dict) and detail.get("errorCode"):
            return str(detail["errorCode"])
    status = error.get("status")
    return str(status) if status else None


def result(response: httpx.Response) -> SendResult:
    status = response.status_code
    body = json_object(response)
    if 200 <= status < 300:
        name = body.get("name")
        return sent(name if isinstance(name, str) else None, status)
    reason = error_reason(body)
    error = body.get("error")
    text = error.get("message", "") if isinstance(error, dict) else ""
    return failed(
        CODES.get(reason or "", class_of_status(status)),
        f"FCM {reason or status}: {text}".rstrip(": "),
        status_code=status,
        retry_after=retry_after(response.headers),
        suppress="unregistered_device" if reason == "UNREGISTERED" else None,
    )


class FcmAdapter:
    provider = "fcm"
    channel = "push"

    def __init__(
        self,
        credentials: FcmCredentials,
        *,
        http: httpx.AsyncClient,
        base_url: str = BASE_URL,
        token_url: str = TOKEN_URL,
    ) -> None:
        self.account = credentials.service_account
        self.http = http
        self.base_url = base_url
        # The token URL is ours (or the operator's), never the service account's `token_uri`:
        # a tenant could otherwise make Herald POST signed assertions to any host.
        self.token_url = token_url
        self.cache_key = cache_key(self.account.client_email, self.account.private_key, token_url)

    async def send(self, message: OutboundMessage) -> SendResult:
        if not isinstance(message.content, PushContent):
            return wrong_content(self, message)
        if not message.address.startswith(ADDRESS_PREFIX):
            return failed("permanent", "not an FCM token (expected fcm:<token>)")
        body = payload(message.address.removeprefix(ADDRESS_PREFIX), message.content, message)
        try:
            response = await self._post(body)
            if response.status_code == 401 and error_reason(json_object(response)) in (
                None,
                "UNAUTHENTICATED",
            ):
                # Our cached access token was revoked or expired early: mint one and retry once.
                access_tokens.drop(self.cache_key)
                response = await self._post(body)
        except TokenRefused as refused:
            return refused.result
        except httpx.HTTPError as error:
            return network_failure(error)
        return result(response)

    async def _post(self, body: dict[str, Any]) -> httpx.Response:
        token = await self._access_token()
        return await self.http.post(
            f"{self.base_url}/v1/projects/{self.account.project_id}/messages:send",
            json=body,
            headers={"authorization": f"Bearer {token}"},
        )

    async def _access_token(self) -> str:
        cached = access_tokens.get(self.cache_key)
        if cached is not None:
            return cached
        try:
            assertion = self._assertion()
        except (ValueError, TypeError, jwt.PyJWTError):
            raise TokenRefused(
                failed("config", "cannot sign with the service account's private key")
            ) from None
        response = await self.http.post(
            self.token_url, data={"grant_type": JWT_BEARER, "assertion": assertion}
        )
        body = json_object(response)
        token = body.get("access_token")
        if response.status_code != 200 or not isinstance(token, str):
            raise TokenRefused(_token_failure(response, body))
        access_tokens.put(self.cache_key, token, float(body.get("expires_in") or 3600))
        return token

    def _assertion(self) -> str:
        now = int(time.time())
        claims = {
            "iss": self.account.client_email,
            "scope": SCOPE,
            "aud": self.token_url,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME,
        }
        headers = {"kid": self.account.private_key_id} if self.account.private_key_id else None
        return jwt.encode(
            claims, pem_bytes(self.account.private_key), algorithm="RS256", headers=headers
        )


def _token_failure(response: httpx.Response, body: dict[str, Any]) -> SendResult:
    status = response.status_code
    detail = body.get("error_description") or body.get("error") or ""
    text = f"Google token endpoint {status}: {detail}".rstrip(": ")
    # 400 invalid_grant / 401 invalid_client: the service account is wrong or disabled.
    error_class: ErrorClass = "config" if status in (400, 401, 403) else class_of_status(status)
    return failed(error_class, text, status_code=status, retry_after=retry_after(response.headers))
