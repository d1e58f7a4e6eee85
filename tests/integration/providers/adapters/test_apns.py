"""APNs (push) against Apple's protocol, faked at the wire with respx: the exact request and
its provider JWT, the token's reuse and the environment, the error table of PROVIDERS.md,
a new token after a 403, malformed device tokens refused without a call.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import httpx
import jwt
import pytest
import respx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from app.providers.adapters import apns
from app.providers.base import SendResult
from tests.integration.providers.adapters.helpers import (
    DEVICE,
    PUSH,
    adapter_for,
    assert_failure,
    outbound,
)

EC_KEY = ec.generate_private_key(ec.SECP256R1())
EC_PEM = EC_KEY.private_bytes(
    serialization.Encoding.PEM,
    serialization.PrivateFormat.PKCS8,
    serialization.NoEncryption(),
).decode()
APNS_CREDENTIALS = {"team_id": "TEAM123456", "key_id": "KEY1234567", "private_key": EC_PEM}
APNS_URL = f"https://api.push.apple.com/3/device/{DEVICE}"


@pytest.fixture
def apple(provider_api: respx.MockRouter) -> Iterator[respx.MockRouter]:
    apns.provider_tokens.clear()
    yield provider_api
    apns.provider_tokens.clear()


async def test_apns_sends_the_exact_request(
    http: httpx.AsyncClient, apple: respx.MockRouter
) -> None:
    route = apple.post(APNS_URL).mock(
        side_effect=lambda request: httpx.Response(
            200, headers={"apns-id": request.headers["apns-id"]}
        )
    )
    adapter = adapter_for("apns", "push", APNS_CREDENTIALS, {"topic": "com.acme.app"}, http)
    message = outbound("push", f"apns:{DEVICE}", PUSH)

    result = await adapter.send(message)

    assert result == SendResult(
        ok=True, provider_message_id=str(message.message_id), status_code=200
    )
    request = route.calls.last.request
    assert request.headers["apns-topic"] == "com.acme.app"
    assert request.headers["apns-push-type"] == "alert"
    assert request.headers["apns-id"] == str(message.message_id)
    scheme, _, token = request.headers["authorization"].partition(" ")
    assert scheme == "bearer"
    assert jwt.get_unverified_header(token) == {"alg": "ES256", "kid": "KEY1234567", "typ": "JWT"}
    assert jwt.decode(token, EC_KEY.public_key(), algorithms=["ES256"])["iss"] == "TEAM123456"
    assert json.loads(request.content) == {
        "order": "42",
        "herald_message_id": str(message.message_id),
        "aps": {"alert": {"title": "Order shipped", "body": "Arriving Tuesday"}},
    }


async def test_apns_reuses_its_provider_token_and_honours_the_environment(
    http: httpx.AsyncClient, apple: respx.MockRouter
) -> None:
    route = apple.post(f"https://api.sandbox.push.apple.com/3/device/{DEVICE}").respond(200)
    options = {"topic": "com.acme.app", "environment": "sandbox"}
    for _ in range(2):
        adapter = adapter_for("apns", "push", APNS_CREDENTIALS, options, http)
        assert (await adapter.send(outbound("push", f"apns:{DEVICE}", PUSH))).ok
    first, second = (call.request.headers["authorization"] for call in route.calls)
    assert first == second


@pytest.mark.parametrize(
    ("status", "reason", "error_class", "suppress"),
    [
        (400, "BadDeviceToken", "permanent", "unregistered_device"),
        (400, "DeviceTokenNotForTopic", "permanent", "unregistered_device"),
        (410, "Unregistered", "permanent", "unregistered_device"),
        (413, "PayloadTooLarge", "permanent", None),
        (429, "TooManyRequests", "rate_limited", None),
        (500, "InternalServerError", "transient", None),
        (503, "ServiceUnavailable", "transient", None),
        (403, "InvalidProviderToken", "config", None),
        (403, "ExpiredProviderToken", "transient", None),
        (400, "BadTopic", "config", None),
    ],
)
async def test_apns_error_table(
    http: httpx.AsyncClient,
    apple: respx.MockRouter,
    status: int,
    reason: str,
    error_class: str,
    suppress: str | None,
) -> None:
    apple.post(APNS_URL).respond(status, json={"reason": reason})
    adapter = adapter_for("apns", "push", APNS_CREDENTIALS, {"topic": "com.acme.app"}, http)
    result = await adapter.send(outbound("push", f"apns:{DEVICE}", PUSH))
    assert_failure(result, error_class, status, suppress=suppress)
    assert result.error == f"APNs {status}: {reason}"


async def test_apns_signs_a_new_token_after_a_403(
    http: httpx.AsyncClient, apple: respx.MockRouter
) -> None:
    route = apple.post(APNS_URL).mock(
        side_effect=[
            httpx.Response(403, json={"reason": "ExpiredProviderToken"}),
            httpx.Response(200),
        ]
    )
    adapter = adapter_for("apns", "push", APNS_CREDENTIALS, {"topic": "com.acme.app"}, http)
    await adapter.send(outbound("push", f"apns:{DEVICE}", PUSH))
    await asyncio.sleep(1.1)  # iat has one-second resolution: a new token differs
    assert (await adapter.send(outbound("push", f"apns:{DEVICE}", PUSH))).ok
    first, second = (call.request.headers["authorization"] for call in route.calls)
    assert first != second


async def test_apns_refuses_malformed_tokens_without_a_call(
    http: httpx.AsyncClient, apple: respx.MockRouter
) -> None:
    adapter = adapter_for("apns", "push", APNS_CREDENTIALS, {"topic": "com.acme.app"}, http)
    for address in ("apns:../../admin", "fcm:abc", f"apns:{DEVICE}/x"):
        assert_failure(await adapter.send(outbound("push", address, PUSH)), "permanent", None)
    assert not apple.calls
