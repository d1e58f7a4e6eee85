"""Every provider adapter against its provider's protocol, faked only at the wire.

HTTP providers are faked with respx (the exact request each provider receives is asserted:
URL, auth, body, idempotency / correlation fields) or with a local HTTP server; SMTP runs
against a real aiosmtpd server; the webhook channel against a local receiver that verifies
signatures with the reference `standardwebhooks` package. Each row of the error tables in
PROVIDERS.md is a parametrized case.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from email.message import EmailMessage
from typing import Any
from urllib.parse import parse_qs

import httpx
import jwt
import pytest
import respx
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from standardwebhooks.webhooks import Webhook

from app.ids import uuid7
from app.providers.adapters import apns, fcm
from app.providers.base import OutboundMessage, ProviderAdapter, SendResult
from app.providers.credentials import normalize
from app.providers.http import new_client
from app.providers.service import ProviderRoute, build_adapter, sandbox_route
from app.providers.standard_webhooks import signature_headers
from app.settings import Settings, load_settings
from app.templates.content import (
    Content,
    EmailContent,
    InboxContent,
    PushContent,
    SmsContent,
    WebhookContent,
)
from tests.fakes import FakeProvider, Mailbox
from tests.support import free_port

OPEN = load_settings({"HERALD_ENV": "test", "HERALD_ALLOW_PRIVATE_URLS": "true"})
STRICT = load_settings({"HERALD_ENV": "test", "HERALD_ALLOW_PRIVATE_URLS": "false"})

EMAIL = EmailContent(subject="Your code", text="Code: 1234", html="<p>Code: <b>1234</b></p>")
SMS = SmsContent(text="Your code is 1234")
PUSH = PushContent(title="Order shipped", body="Arriving Tuesday", data={"order": "42"})
HOOK = WebhookContent(body={"event": "order.shipped", "order": 42})
SENDER = {"from_email": "hello@acme.test", "from_name": "Acme"}
UNSUBSCRIBE = {"List-Unsubscribe": "<https://herald.test/u/abc>"}


def outbound(
    channel: str, address: str, content: Content, headers: dict[str, str] | None = None
) -> OutboundMessage:
    return OutboundMessage(
        message_id=uuid7(),
        tenant_id=uuid7(),
        notification_id=uuid7(),
        channel=channel,
        address=address,
        content=content,
        headers=headers or {},
    )


def adapter_for(
    provider: str,
    channel: str,
    credentials: dict[str, Any],
    options: dict[str, Any],
    http: httpx.AsyncClient,
    settings: Settings = OPEN,
) -> ProviderAdapter:
    """Through the real path: validated as the API validates, built as the worker builds."""
    stored = normalize(provider, channel, credentials, options)
    route = ProviderRoute(
        uuid7(), provider, channel, 0, 10.0, 10, stored.credentials, stored.options
    )
    return build_adapter(route, http=http, settings=settings)


def assert_failure(
    result: SendResult,
    error_class: str,
    status_code: int | None,
    *,
    suppress: str | None = None,
    retry_after: float | None = None,
) -> None:
    assert not result.ok, result
    assert (result.error_class, result.status_code) == (error_class, status_code), result
    assert result.suppress == suppress, result
    if retry_after is not None:
        assert result.retry_after == pytest.approx(retry_after, abs=2), result
    assert result.error and len(result.error) <= 300


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with new_client() as client:
        yield client


@pytest.fixture
def provider_api() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_mocked=True, assert_all_called=False) as router:
        yield router


# --- SendGrid -------------------------------------------------------------------------

SENDGRID_URL = "https://api.sendgrid.com/v3/mail/send"


async def test_sendgrid_sends_the_exact_request(
    http: httpx.AsyncClient, provider_api: respx.MockRouter
) -> None:
    route = provider_api.post(SENDGRID_URL).respond(202, headers={"X-Message-Id": "sg-abc"})
    adapter = adapter_for("sendgrid", "email", {"api_key": "SG.key"}, SENDER, http)
    message = outbound("email", "ada@example.com", EMAIL, UNSUBSCRIBE)

    result = await adapter.send(message)

    assert result == SendResult(ok=True, provider_message_id="sg-abc", status_code=202)
    request = route.calls.last.request
    assert request.headers["authorization"] == "Bearer SG.key"
    herald_id = str(message.message_id)
    assert json.loads(request.content) == {
        "personalizations": [{"to": [{"email": "ada@example.com"}]}],
        "from": {"email": "hello@acme.test", "name": "Acme"},
        "subject": "Your code",
        "content": [
            {"type": "text/plain", "value": "Code: 1234"},
            {"type": "text/html", "value": "<p>Code: <b>1234</b></p>"},
        ],
        "headers": {
            "List-Unsubscribe": "<https://herald.test/u/abc>",
            "X-Herald-Message-Id": herald_id,
        },
        "custom_args": {"herald_message_id": herald_id},
    }


@pytest.mark.parametrize(
    ("status", "error_class"),
    [
        (400, "permanent"),
        (413, "permanent"),
        (429, "rate_limited"),
        (500, "transient"),
        (503, "transient"),
        (401, "config"),
        (403, "config"),
    ],
)
async def test_sendgrid_error_table(
    http: httpx.AsyncClient, provider_api: respx.MockRouter, status: int, error_class: str
) -> None:
    reset = int(time.time()) + 30
    provider_api.post(SENDGRID_URL).respond(
        status,
        json={"errors": [{"message": "nope", "field": "from.email"}]},
        headers={"X-RateLimit-Reset": str(reset)} if status == 429 else {},
    )
    adapter = adapter_for("sendgrid", "email", {"api_key": "SG.key"}, SENDER, http)
    result = await adapter.send(outbound("email", "ada@example.com", EMAIL))
    assert_failure(result, error_class, status, retry_after=30 if status == 429 else None)
    assert "nope (from.email)" in (result.error or "")


async def test_timeouts_and_refused_connections_are_transient(
    http: httpx.AsyncClient, provider_api: respx.MockRouter
) -> None:
    provider_api.post(SENDGRID_URL).mock(side_effect=httpx.ReadTimeout("slow"))
    adapter = adapter_for("sendgrid", "email", {"api_key": "SG.key"}, SENDER, http)
    result = await adapter.send(outbound("email", "ada@example.com", EMAIL))
    assert_failure(result, "transient", None)
    assert "in time" in (result.error or "")

    provider_api.post(SENDGRID_URL).mock(side_effect=httpx.ConnectError("refused"))
    assert_failure(await adapter.send(outbound("email", "a@b.test", EMAIL)), "transient", None)


async def test_content_of_another_channel_is_refused_without_a_call(
    http: httpx.AsyncClient, provider_api: respx.MockRouter
) -> None:
    adapter = adapter_for("sendgrid", "email", {"api_key": "SG.key"}, SENDER, http)
    result = await adapter.send(outbound("email", "ada@example.com", SMS))
    assert_failure(result, "permanent", None)
    assert not provider_api.calls


# --- Mailgun --------------------------------------------------------------------------

MAILGUN = {"domain": "mg.acme.test", **SENDER}


@pytest.mark.parametrize(
    ("region", "url"),
    [
        ("us", "https://api.mailgun.net/v3/mg.acme.test/messages"),
        ("eu", "https://api.eu.mailgun.net/v3/mg.acme.test/messages"),
    ],
)
async def test_mailgun_sends_the_exact_request(
    http: httpx.AsyncClient, provider_api: respx.MockRouter, region: str, url: str
) -> None:
    route = provider_api.post(url).respond(
        200, json={"id": "<20261122.1@mg.acme.test>", "message": "Queued. Thank you."}
    )
    adapter = adapter_for(
        "mailgun", "email", {"api_key": "key-1"}, {**MAILGUN, "region": region}, http
    )
    message = outbound("email", "ada@example.com", EMAIL, UNSUBSCRIBE)

    result = await adapter.send(message)

    assert result == SendResult(
        ok=True, provider_message_id="20261122.1@mg.acme.test", status_code=200
    )
    request = route.calls.last.request
    assert request.headers["authorization"] == httpx.BasicAuth("api", "key-1")._auth_header
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert parse_qs(request.content.decode()) == {
        "from": ["Acme <hello@acme.test>"],
        "to": ["ada@example.com"],
        "subject": ["Your code"],
        "text": ["Code: 1234"],
        "html": ["<p>Code: <b>1234</b></p>"],
        "h:List-Unsubscribe": ["<https://herald.test/u/abc>"],
        "h:X-Herald-Message-Id": [str(message.message_id)],
        "v:herald_message_id": [str(message.message_id)],
    }


@pytest.mark.parametrize(
    ("status", "error_class"),
    [
        (400, "permanent"),
        (413, "permanent"),
        (401, "config"),
        (403, "config"),
        (404, "config"),
        (429, "rate_limited"),
        (500, "transient"),
        (503, "transient"),
    ],
)
async def test_mailgun_error_table(
    http: httpx.AsyncClient, provider_api: respx.MockRouter, status: int, error_class: str
) -> None:
    provider_api.post("https://api.mailgun.net/v3/mg.acme.test/messages").respond(
        status, json={"message": "Domain not found"}, headers={"Retry-After": "7"}
    )
    adapter = adapter_for("mailgun", "email", {"api_key": "key-1"}, MAILGUN, http)
    result = await adapter.send(outbound("email", "ada@example.com", EMAIL))
    assert_failure(result, error_class, status, retry_after=7)


# --- Twilio ---------------------------------------------------------------------------

TWILIO_SID = "AC" + "0123456789abcdef" * 2
TWILIO_URL = f"https://api.twilio.com/2010-04-01/Accounts/{TWILIO_SID}/Messages.json"
TWILIO_CREDENTIALS = {"account_sid": TWILIO_SID, "auth_token": "tw-token"}


async def test_twilio_sends_the_exact_request(
    http: httpx.AsyncClient, provider_api: respx.MockRouter
) -> None:
    route = provider_api.post(TWILIO_URL).respond(201, json={"sid": "SM123", "status": "queued"})
    options = {"from_number": "+15005550006", "status_callback": "https://herald.test/tw"}
    adapter = adapter_for("twilio", "sms", TWILIO_CREDENTIALS, options, http)
    message = outbound("sms", "+14155550123", SMS)

    result = await adapter.send(message)

    assert result == SendResult(ok=True, provider_message_id="SM123", status_code=201)
    request = route.calls.last.request
    assert request.headers["authorization"] == httpx.BasicAuth(TWILIO_SID, "tw-token")._auth_header
    assert parse_qs(request.content.decode()) == {
        "To": ["+14155550123"],
        "Body": ["Your code is 1234"],
        "From": ["+15005550006"],
        "StatusCallback": [f"https://herald.test/tw?herald_message_id={message.message_id}"],
    }


async def test_twilio_messaging_service(
    http: httpx.AsyncClient, provider_api: respx.MockRouter
) -> None:
    route = provider_api.post(TWILIO_URL).respond(201, json={"sid": "SM9"})
    service_sid = "MG" + "f" * 32
    adapter = adapter_for(
        "twilio", "sms", TWILIO_CREDENTIALS, {"messaging_service_sid": service_sid}, http
    )
    assert (await adapter.send(outbound("sms", "+14155550123", SMS))).ok
    form = parse_qs(route.calls.last.request.content.decode())
    assert form["MessagingServiceSid"] == [service_sid] and "From" not in form


@pytest.mark.parametrize(
    ("http_status", "code", "error_class", "suppress"),
    [
        (400, 21211, "permanent", "invalid_address"),  # invalid To
        (400, 21610, "permanent", "unsubscribed"),  # unsubscribed (STOP)
        (400, 21614, "permanent", "invalid_address"),  # not a mobile number
        (400, 21612, "permanent", None),  # cannot route
        (429, 20429, "rate_limited", None),
        (400, 30001, "transient", None),  # queue overflow
        (401, 20003, "config", None),  # authentication
        (400, 21606, "config", None),  # From not SMS-capable
        (400, 21608, "config", None),  # trial account, unverified To
    ],
)
async def test_twilio_error_table(
    http: httpx.AsyncClient,
    provider_api: respx.MockRouter,
    http_status: int,
    code: int,
    error_class: str,
    suppress: str | None,
) -> None:
    provider_api.post(TWILIO_URL).respond(
        http_status,
        json={"code": code, "message": "Twilio says no", "status": http_status},
    )
    adapter = adapter_for(
        "twilio", "sms", TWILIO_CREDENTIALS, {"from_number": "+15005550006"}, http
    )
    result = await adapter.send(outbound("sms", "+14155550123", SMS))
    assert_failure(result, error_class, code, suppress=suppress)
    assert result.error == f"Twilio {code}: Twilio says no"


async def test_twilio_http_429_without_a_code_is_rate_limited(
    http: httpx.AsyncClient, provider_api: respx.MockRouter
) -> None:
    provider_api.post(TWILIO_URL).respond(
        429, text="Too Many Requests", headers={"Retry-After": "3"}
    )
    adapter = adapter_for(
        "twilio", "sms", TWILIO_CREDENTIALS, {"from_number": "+15005550006"}, http
    )
    result = await adapter.send(outbound("sms", "+14155550123", SMS))
    assert_failure(result, "rate_limited", 429, retry_after=3)


@pytest.fixture
def fake_provider() -> Iterator[FakeProvider]:
    fake = FakeProvider()
    fake.thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


async def test_provider_endpoints_follow_the_operator_override(
    http: httpx.AsyncClient, fake_provider: FakeProvider
) -> None:
    """HERALD_PROVIDER_BASE_URLS points an adapter at a local server speaking Twilio."""
    settings = load_settings({"HERALD_PROVIDER_BASE_URLS": f"twilio={fake_provider.url}"})
    fake_provider.answer(201, {"sid": "SMlocal"})
    adapter = adapter_for(
        "twilio", "sms", TWILIO_CREDENTIALS, {"from_number": "+15005550006"}, http, settings
    )
    result = await adapter.send(outbound("sms", "+14155550123", SMS))
    assert result.ok and result.provider_message_id == "SMlocal"
    _, path, headers, body = fake_provider.requests[-1]
    assert path == f"/2010-04-01/Accounts/{TWILIO_SID}/Messages.json"
    assert headers["authorization"] == httpx.BasicAuth(TWILIO_SID, "tw-token")._auth_header
    assert parse_qs(body.decode())["To"] == ["+14155550123"]


# --- FCM ------------------------------------------------------------------------------

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


# --- APNs -----------------------------------------------------------------------------

EC_KEY = ec.generate_private_key(ec.SECP256R1())
EC_PEM = EC_KEY.private_bytes(
    serialization.Encoding.PEM,
    serialization.PrivateFormat.PKCS8,
    serialization.NoEncryption(),
).decode()
APNS_CREDENTIALS = {"team_id": "TEAM123456", "key_id": "KEY1234567", "private_key": EC_PEM}
DEVICE = "a1b2c3d4" * 8
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


# --- Webhook channel --------------------------------------------------------------------

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def test_standard_webhooks_test_vector() -> None:
    headers = signature_headers(
        SECRET,
        message_id="msg_p5jXN8AQM9LWM0D4loKWxJek",
        body=b'{"test": 2432232314}',
        timestamp=1614265330,
    )
    assert headers == {
        "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "webhook-timestamp": "1614265330",
        "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    }


async def test_webhook_is_signed_so_the_reference_library_verifies_it(
    http: httpx.AsyncClient, fake_provider: FakeProvider
) -> None:
    fake_provider.answer(204)
    adapter = adapter_for("webhook", "webhook", {"secret": SECRET}, {}, http)
    message = outbound("webhook", f"{fake_provider.url}/hooks/herald?x=1", HOOK)

    result = await adapter.send(message)

    assert result == SendResult(ok=True, status_code=204)
    _, path, headers, body = fake_provider.requests[-1]
    assert path == "/hooks/herald?x=1"
    assert headers["host"] == f"127.0.0.1:{fake_provider.port}"
    assert headers["content-type"] == "application/json"
    assert headers["webhook-id"] == str(message.message_id)
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 5
    assert Webhook(SECRET).verify(body, headers) == {"event": "order.shipped", "order": 42}


async def test_webhook_id_is_stable_and_timestamp_new_across_retries(
    http: httpx.AsyncClient, fake_provider: FakeProvider
) -> None:
    fake_provider.answer(503)
    adapter = adapter_for("webhook", "webhook", {"secret": SECRET}, {}, http)
    message = outbound("webhook", f"{fake_provider.url}/h", HOOK)
    await adapter.send(message)
    await asyncio.sleep(1.1)
    await adapter.send(message)
    first, second = (request[2] for request in fake_provider.requests)
    assert first["webhook-id"] == second["webhook-id"] == str(message.message_id)
    assert first["webhook-timestamp"] != second["webhook-timestamp"]


@pytest.mark.parametrize(
    ("status", "error_class", "suppress"),
    [
        (301, "permanent", None),
        (302, "permanent", None),
        (307, "permanent", None),
        (308, "permanent", None),
        (410, "permanent", "invalid_address"),
        (429, "rate_limited", None),
        (502, "transient", None),
        (503, "transient", None),
        (504, "transient", None),
        (500, "transient", None),
        (400, "permanent", None),
        (401, "permanent", None),
        (404, "permanent", None),
    ],
)
async def test_webhook_answer_table(
    http: httpx.AsyncClient,
    fake_provider: FakeProvider,
    status: int,
    error_class: str,
    suppress: str | None,
) -> None:
    headers = {"Retry-After": "9"}
    if 300 <= status < 400:
        headers["Location"] = f"{fake_provider.url}/elsewhere"
    fake_provider.answer(status, headers=headers)
    adapter = adapter_for("webhook", "webhook", {"secret": SECRET}, {}, http)
    result = await adapter.send(outbound("webhook", f"{fake_provider.url}/h", HOOK))
    retry = 9 if status in (429, 500, 502, 503, 504) else None
    assert_failure(result, error_class, status, suppress=suppress, retry_after=retry)
    assert [request[1] for request in fake_provider.requests] == ["/h"]  # no redirect followed


async def test_webhook_to_a_private_address_is_refused_by_default(
    http: httpx.AsyncClient, fake_provider: FakeProvider
) -> None:
    adapter = adapter_for("webhook", "webhook", {"secret": SECRET}, {}, http, STRICT)
    for url in (f"{fake_provider.url}/h", f"http://localhost:{fake_provider.port}/h"):
        result = await adapter.send(outbound("webhook", url, HOOK))
        assert_failure(result, "permanent", None)
        assert "the address is not allowed" in (result.error or "")
    # The tenant reads the error: it does not say where the name pointed.
    assert result.error == (
        "URL refused: localhost: the address is not allowed; Herald only calls public addresses"
    )
    assert fake_provider.requests == []


async def test_webhook_unreachable_and_slow_endpoints_are_transient(
    http: httpx.AsyncClient,
) -> None:
    adapter = adapter_for("webhook", "webhook", {"secret": SECRET}, {}, http)
    closed = f"http://127.0.0.1:{free_port()}/h"
    assert_failure(await adapter.send(outbound("webhook", closed, HOOK)), "transient", None)
    unknown = "http://no-such-host.invalid/h"
    assert_failure(await adapter.send(outbound("webhook", unknown, HOOK)), "transient", None)


async def test_a_generated_webhook_secret_signs(
    http: httpx.AsyncClient, fake_provider: FakeProvider
) -> None:
    stored = normalize("webhook", "webhook", {}, {})
    assert stored.generated_secret and stored.credentials["secret"] == stored.generated_secret
    fake_provider.answer(200)
    adapter = adapter_for("webhook", "webhook", stored.credentials, {}, http)
    assert (await adapter.send(outbound("webhook", f"{fake_provider.url}/h", HOOK))).ok
    _, _, headers, body = fake_provider.requests[-1]
    Webhook(stored.generated_secret).verify(body, headers)


# --- SMTP -------------------------------------------------------------------------------


def _check_login(
    server: SMTPServer, session: Session, envelope: Envelope, mechanism: str, data: Any
) -> AuthResult:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (b"mailer", b"right")
    return AuthResult(success=ok, handled=False)  # not handled: aiosmtpd answers 535


@pytest.fixture
def smtp_server() -> Iterator[tuple[Mailbox, int]]:
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield mailbox, port
    controller.stop()


@pytest.fixture
def smtp_auth_server() -> Iterator[tuple[Mailbox, int]]:
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(
        mailbox,
        hostname="127.0.0.1",
        port=port,
        authenticator=_check_login,
        auth_required=True,
        auth_require_tls=False,  # the test server has no certificate; production uses TLS
    )
    controller.start()
    yield mailbox, port
    controller.stop()


def smtp_options(port: int, **extra: Any) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": port, "security": "none", **SENDER, **extra}


async def test_smtp_delivers_both_parts_and_our_headers(
    http: httpx.AsyncClient, smtp_server: tuple[Mailbox, int]
) -> None:
    mailbox, port = smtp_server
    adapter = adapter_for("smtp", "email", {}, smtp_options(port, reply_to="help@acme.test"), http)
    message = outbound("email", "ada@example.com", EMAIL, {**UNSUBSCRIBE, "Subject": "forged"})

    result = await adapter.send(message)

    assert result.ok and result.status_code == 250
    assert result.provider_message_id == f"{message.message_id}@acme.test"
    [envelope] = mailbox.received
    assert envelope.mail_from == "hello@acme.test"
    assert envelope.rcpt_tos == ["ada@example.com"]
    assert isinstance(envelope.content, bytes)
    mime = email.message_from_bytes(envelope.content, policy=email.policy.default)
    assert isinstance(mime, EmailMessage)
    assert mime["From"] == "Acme <hello@acme.test>"
    assert mime["To"] == "ada@example.com"
    assert mime.get_all("Subject") == ["Your code"]  # a tenant header cannot replace ours
    assert mime["Reply-To"] == "help@acme.test"
    assert mime["Message-ID"] == f"<{message.message_id}@acme.test>"
    assert mime["X-Herald-Message-Id"] == str(message.message_id)
    assert mime["List-Unsubscribe"] == "<https://herald.test/u/abc>"
    assert mime.get_content_type() == "multipart/alternative"
    plain, html = mime.iter_parts()
    assert (plain.get_content_type(), plain.get_content().strip()) == ("text/plain", "Code: 1234")
    assert html.get_content_type() == "text/html"
    assert html.get_content().strip() == "<p>Code: <b>1234</b></p>"


@pytest.mark.parametrize(
    ("address", "code", "error_class", "suppress"),
    [
        ("dead@example.com", 550, "permanent", "hard_bounce"),
        ("moved@example.com", 551, "permanent", "hard_bounce"),
        ("badname@example.com", 553, "permanent", "hard_bounce"),
        ("full@example.com", 552, "permanent", None),
        ("busy@example.com", 450, "transient", None),
        ("later@example.com", 451, "transient", None),
        ("spam@example.com", 554, "permanent", None),  # refused at DATA: not the address
        ("defer@example.com", 452, "transient", None),
    ],
)
async def test_smtp_reply_table(
    http: httpx.AsyncClient,
    smtp_server: tuple[Mailbox, int],
    address: str,
    code: int,
    error_class: str,
    suppress: str | None,
) -> None:
    mailbox, port = smtp_server
    adapter = adapter_for("smtp", "email", {}, smtp_options(port), http)
    result = await adapter.send(outbound("email", address, EMAIL))
    assert_failure(result, error_class, code, suppress=suppress)
    assert (result.error or "").startswith(f"SMTP {code} ")
    assert mailbox.received == []


async def test_smtp_authentication(
    http: httpx.AsyncClient, smtp_auth_server: tuple[Mailbox, int]
) -> None:
    mailbox, port = smtp_auth_server
    good = {"username": "mailer", "password": "right"}
    adapter = adapter_for("smtp", "email", good, smtp_options(port), http)
    assert (await adapter.send(outbound("email", "ada@example.com", EMAIL))).ok

    wrong = adapter_for("smtp", "email", {**good, "password": "wrong"}, smtp_options(port), http)
    assert_failure(await wrong.send(outbound("email", "ada@example.com", EMAIL)), "config", 535)

    anonymous = adapter_for("smtp", "email", {}, smtp_options(port), http)
    assert_failure(await anonymous.send(outbound("email", "a@example.com", EMAIL)), "config", 530)
    assert len(mailbox.received) == 1


async def test_smtp_without_starttls_support_is_a_config_error(
    http: httpx.AsyncClient, smtp_server: tuple[Mailbox, int]
) -> None:
    _, port = smtp_server
    adapter = adapter_for("smtp", "email", {}, smtp_options(port, security="starttls"), http)
    result = await adapter.send(outbound("email", "ada@example.com", EMAIL))
    assert_failure(result, "config", None)
    assert "STARTTLS" in (result.error or "")


async def test_smtp_unreachable_is_transient_and_private_hosts_are_refused(
    http: httpx.AsyncClient, smtp_server: tuple[Mailbox, int]
) -> None:
    mailbox, port = smtp_server
    closed = adapter_for("smtp", "email", {}, smtp_options(free_port()), http)
    assert_failure(await closed.send(outbound("email", "a@example.com", EMAIL)), "transient", None)

    guarded = adapter_for("smtp", "email", {}, smtp_options(port), http, STRICT)
    result = await guarded.send(outbound("email", "a@example.com", EMAIL))
    assert_failure(result, "config", None)
    assert "the address is not allowed" in (result.error or "")
    assert mailbox.received == []


async def test_smtp_refuses_header_injection(
    http: httpx.AsyncClient, smtp_server: tuple[Mailbox, int]
) -> None:
    mailbox, port = smtp_server
    adapter = adapter_for("smtp", "email", {}, smtp_options(port), http)
    injected = outbound("email", "ada@example.com\r\nBcc: all@example.com", EMAIL)
    assert_failure(await adapter.send(injected), "permanent", None)
    assert mailbox.received == []


# --- Sandbox ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "error_class", "status", "suppress", "retry_after"),
    [
        ("bounce@example.com", "permanent", 550, "hard_bounce", None),
        ("fail@example.com", "permanent", 400, None, None),
        ("+15005550001", "permanent", 400, None, None),
        ("fcm:invalid", "permanent", 400, None, None),
        ("apns:invalid", "permanent", 400, None, None),
        ("transient@example.com", "transient", 503, None, None),
        ("+15005550002", "transient", 503, None, None),
        ("ratelimit@example.com", "rate_limited", 429, None, 1.0),
        ("+15005550003", "rate_limited", 429, None, 1.0),
    ],
)
async def test_sandbox_outcomes_by_address(
    provider_api: respx.MockRouter,
    address: str,
    error_class: str,
    status: int,
    suppress: str | None,
    retry_after: float | None,
) -> None:
    async with new_client() as client:
        adapter = build_adapter(sandbox_route("email"), http=client, settings=OPEN)
        result = await adapter.send(outbound("email", address, EMAIL))
    assert_failure(result, error_class, status, suppress=suppress)
    assert result.retry_after == retry_after
    assert not provider_api.calls  # the sandbox never calls out


@pytest.mark.parametrize(
    ("channel", "address", "content"),
    [
        ("email", "ada@example.com", EMAIL),
        ("sms", "+14155550123", SMS),
        ("push", "fcm:token", PUSH),
        ("push", f"apns:{DEVICE}", PUSH),
        ("webhook", "http://169.254.169.254/never-called", HOOK),
        ("inbox", "user-1", InboxContent(title="Hi", body="There")),
    ],
)
async def test_sandbox_accepts_everything_else_on_every_channel(
    http: httpx.AsyncClient, channel: str, address: str, content: Content
) -> None:
    adapter = build_adapter(sandbox_route(channel), http=http, settings=STRICT)
    result = await adapter.send(outbound(channel, address, content))
    assert result.ok and (result.provider_message_id or "").startswith("sandbox_")
    uuid.UUID(hex=(result.provider_message_id or "").removeprefix("sandbox_"))


@pytest.mark.parametrize("address", ["slow@example.com", "+15005550004"])
async def test_sandbox_slow_addresses_take_two_seconds(
    http: httpx.AsyncClient, address: str
) -> None:
    adapter = build_adapter(sandbox_route("email"), http=http, settings=OPEN)
    began = time.monotonic()
    result = await adapter.send(outbound("email", address, EMAIL))
    assert result.ok and time.monotonic() - began >= 2.0
