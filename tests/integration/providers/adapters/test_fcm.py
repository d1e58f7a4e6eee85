"""FCM (push) against Google's protocol, faked at the wire with respx: a signed assertion
exchanged for an access token, the token's cache and renewal, the error table of
PROVIDERS.md, token endpoint failures, APNs tokens refused.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs

import httpx
import jwt
import pytest
import respx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from app.providers.adapters import fcm
from app.providers.base import SendResult
from tests.integration.providers.adapters.helpers import (
    PUSH,
    adapter_for,
    assert_failure,
    outbound,
)

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_PEM = RSA_KEY.private_bytes(
    serialization.Encoding.PEM,
    serialization.PrivateFormat.PKCS8,
    serialization.NoEncryption(),
).decode()
SERVICE_ACCOUNT = {
    "type": "service_account",
    "project_id": "herald-test",
    "private_key_id": "kid-1",
    "private_key": RSA_PEM,
    "client_email": "push@herald-test.iam.gserviceaccount.com",
    # A tenant-supplied token URI is ignored: Herald only ever posts assertions to Google.
    "token_uri": "https://attacker.test/token",
}
FCM_URL = "https://fcm.googleapis.com/v1/projects/herald-test/messages:send"
GOOGLE_TOKEN_URL = "https://oauth2.googleapis.com/token"


@pytest.fixture
def google(provider_api: respx.MockRouter) -> Iterator[respx.Route]:
    fcm.access_tokens.clear()  # tokens are cached per process: start each test without one
    yield provider_api.post(GOOGLE_TOKEN_URL).respond(
        200, json={"access_token": "ya29.token", "expires_in": 3599, "token_type": "Bearer"}
    )
    fcm.access_tokens.clear()


async def test_fcm_exchanges_a_signed_assertion_then_sends(
    http: httpx.AsyncClient, provider_api: respx.MockRouter, google: respx.Route
) -> None:
    send = provider_api.post(FCM_URL).respond(
        200, json={"name": "projects/herald-test/messages/0:1"}
    )
    adapter = adapter_for("fcm", "push", {"service_account": SERVICE_ACCOUNT}, {}, http)
    message = outbound("push", "fcm:device-token-1", PUSH)

    result = await adapter.send(message)

    assert result == SendResult(
        ok=True, provider_message_id="projects/herald-test/messages/0:1", status_code=200
    )
    exchange = parse_qs(google.calls.last.request.content.decode())
    assert exchange["grant_type"] == ["urn:ietf:params:oauth:grant-type:jwt-bearer"]
    assertion = exchange["assertion"][0]
    assert jwt.get_unverified_header(assertion)["kid"] == "kid-1"
    claims = jwt.decode(
        assertion, RSA_KEY.public_key(), algorithms=["RS256"], audience=GOOGLE_TOKEN_URL
    )
    assert claims["iss"] == "push@herald-test.iam.gserviceaccount.com"
    assert claims["scope"] == "https://www.googleapis.com/auth/firebase.messaging"
    assert claims["exp"] - claims["iat"] == 3600

    request = send.calls.last.request
    assert request.headers["authorization"] == "Bearer ya29.token"
    assert json.loads(request.content) == {
        "message": {
            "token": "device-token-1",
            "notification": {"title": "Order shipped", "body": "Arriving Tuesday"},
            "data": {"order": "42", "herald_message_id": str(message.message_id)},
        }
    }


async def test_fcm_caches_the_access_token(
    http: httpx.AsyncClient, provider_api: respx.MockRouter, google: respx.Route
) -> None:
    provider_api.post(FCM_URL).respond(200, json={"name": "projects/herald-test/messages/1"})
    for _ in range(3):  # a new adapter per batch, as the worker builds them
        adapter = adapter_for("fcm", "push", {"service_account": SERVICE_ACCOUNT}, {}, http)
        assert (await adapter.send(outbound("push", "fcm:t", PUSH))).ok
    assert google.call_count == 1


async def test_fcm_renews_a_token_google_no_longer_accepts(
    http: httpx.AsyncClient, provider_api: respx.MockRouter, google: respx.Route
) -> None:
    unauthenticated = httpx.Response(
        401, json={"error": {"code": 401, "message": "expired", "status": "UNAUTHENTICATED"}}
    )
    provider_api.post(FCM_URL).mock(
        side_effect=[unauthenticated, httpx.Response(200, json={"name": "projects/p/messages/2"})]
    )
    adapter = adapter_for("fcm", "push", {"service_account": SERVICE_ACCOUNT}, {}, http)
    assert (await adapter.send(outbound("push", "fcm:t", PUSH))).ok
    assert google.call_count == 2


def _fcm_error(status: int, canonical: str, code: str | None) -> dict[str, Any]:
    details = [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code}]
    return {
        "error": {
            "code": status,
            "message": f"{code or canonical} happened",
            "status": canonical,
            "details": details if code else [],
        }
    }


@pytest.mark.parametrize(
    ("status", "canonical", "code", "error_class", "suppress"),
    [
        (404, "NOT_FOUND", "UNREGISTERED", "permanent", "unregistered_device"),
        (400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", "permanent", None),
        (403, "PERMISSION_DENIED", "SENDER_ID_MISMATCH", "permanent", None),
        (429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED", "rate_limited", None),
        (503, "UNAVAILABLE", "UNAVAILABLE", "transient", None),
        (500, "INTERNAL", "INTERNAL", "transient", None),
        (401, "UNAUTHENTICATED", "THIRD_PARTY_AUTH_ERROR", "config", None),
        (503, "UNAVAILABLE", None, "transient", None),  # canonical status only
    ],
)
async def test_fcm_error_table(
    http: httpx.AsyncClient,
    provider_api: respx.MockRouter,
    google: respx.Route,
    status: int,
    canonical: str,
    code: str | None,
    error_class: str,
    suppress: str | None,
) -> None:
    provider_api.post(FCM_URL).respond(
        status, json=_fcm_error(status, canonical, code), headers={"Retry-After": "12"}
    )
    adapter = adapter_for("fcm", "push", {"service_account": SERVICE_ACCOUNT}, {}, http)
    result = await adapter.send(outbound("push", "fcm:device", PUSH))
    assert_failure(result, error_class, status, suppress=suppress, retry_after=12)
    assert (code or canonical) in (result.error or "")


@pytest.mark.parametrize(
    ("status", "error_class"), [(400, "config"), (401, "config"), (503, "transient")]
)
async def test_fcm_token_endpoint_failures(
    http: httpx.AsyncClient,
    provider_api: respx.MockRouter,
    status: int,
    error_class: str,
) -> None:
    fcm.access_tokens.clear()
    provider_api.post(GOOGLE_TOKEN_URL).respond(
        status, json={"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
    )
    send = provider_api.post(FCM_URL)
    adapter = adapter_for("fcm", "push", {"service_account": SERVICE_ACCOUNT}, {}, http)
    result = await adapter.send(outbound("push", "fcm:device", PUSH))
    assert_failure(result, error_class, status)
    assert not send.called


async def test_fcm_refuses_apns_tokens(http: httpx.AsyncClient, google: respx.Route) -> None:
    adapter = adapter_for("fcm", "push", {"service_account": SERVICE_ACCOUNT}, {}, http)
    assert_failure(await adapter.send(outbound("push", "apns:abcd", PUSH)), "permanent", None)
