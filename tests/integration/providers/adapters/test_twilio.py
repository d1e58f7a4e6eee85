"""Twilio (SMS) against its protocol: the exact request it receives (respx), messaging
services, the error table of PROVIDERS.md, a 429 without a code, and the operator's
endpoint override (a local server speaking Twilio).
"""

from __future__ import annotations

from urllib.parse import parse_qs

import httpx
import pytest
import respx

from app.providers.base import SendResult
from app.settings import load_settings
from tests.fakes import FakeProvider
from tests.integration.providers.adapters.helpers import (
    SMS,
    adapter_for,
    assert_failure,
    outbound,
)

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
