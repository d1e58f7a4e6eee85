"""Postmark (e-mail) against its protocol, faked at the wire by a local HTTP server reached
through HERALD_PROVIDER_BASE_URLS: the exact request it receives, its error codes (with the
addresses they suppress), timeouts, and content of another channel refused without a call.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import respx

from app.providers.base import SendResult
from app.settings import load_settings
from tests.fakes import FakeProvider
from tests.integration.providers.adapters.helpers import (
    EMAIL,
    SENDER,
    SMS,
    UNSUBSCRIBE,
    adapter_for,
    assert_failure,
    outbound,
)

TOKEN = {"server_token": "f2a1c7d0-0000-4000-8000-00000000abcd"}
ACCEPTED = {
    "To": "ada@example.com",
    "SubmittedAt": "2026-12-20T09:00:00.0000000-05:00",
    "MessageID": "b7bc2f4a-e38e-4336-af7d-e6c392c2f817",
    "ErrorCode": 0,
    "Message": "OK",
}


def postmark_adapter(
    fake: FakeProvider, http: httpx.AsyncClient, options: dict[str, Any] = SENDER
) -> Any:
    settings = load_settings(
        {"HERALD_ENV": "test", "HERALD_PROVIDER_BASE_URLS": f"postmark={fake.url}"}
    )
    return adapter_for("postmark", "email", TOKEN, options, http, settings)


async def test_postmark_sends_the_exact_request(
    http: httpx.AsyncClient, fake_provider: FakeProvider
) -> None:
    fake_provider.answer(200, ACCEPTED)
    options = {**SENDER, "reply_to": "support@acme.test", "message_stream": "broadcast"}
    adapter = postmark_adapter(fake_provider, http, options)
    message = outbound(
        "email", "ada@example.com", EMAIL, {**UNSUBSCRIBE, "X-Herald-Message-Id": "forged"}
    )

    result = await adapter.send(message)

    assert result == SendResult(
        ok=True, provider_message_id="b7bc2f4a-e38e-4336-af7d-e6c392c2f817", status_code=200
    )
    method, path, headers, body = fake_provider.requests[-1]
    assert (method, path) == ("POST", "/email")
    assert headers["x-postmark-server-token"] == TOKEN["server_token"]
    assert headers["accept"] == "application/json"
    assert headers["content-type"] == "application/json"
    herald_id = str(message.message_id)
    assert json.loads(body) == {
        "From": "Acme <hello@acme.test>",
        "To": "ada@example.com",
        "Subject": "Your code",
        "TextBody": "Code: 1234",
        "HtmlBody": "<p>Code: <b>1234</b></p>",
        "ReplyTo": "support@acme.test",
        "Headers": [
            *({"Name": name, "Value": value} for name, value in UNSUBSCRIBE.items()),
            {"Name": "X-Herald-Message-Id", "Value": herald_id},
        ],
        "MessageStream": "broadcast",
        "Metadata": {"herald_message_id": herald_id},
    }


async def test_postmark_defaults_to_the_outbound_stream(
    http: httpx.AsyncClient, provider_api: respx.MockRouter
) -> None:
    """Without an override it calls api.postmarkapp.com; no reply-to, no HTML, no opens."""
    route = provider_api.post("https://api.postmarkapp.com/email").respond(200, json=ACCEPTED)
    adapter = adapter_for("postmark", "email", TOKEN, {"from_email": "hi@acme.test"}, http)
    text_only = type(EMAIL)(subject="Hi", text="Plain", html=None)

    assert (await adapter.send(outbound("email", "ada@example.com", text_only))).ok

    sent = json.loads(route.calls.last.request.content)
    assert sent["From"] == "hi@acme.test" and sent["MessageStream"] == "outbound"
    assert not {"ReplyTo", "HtmlBody", "TrackOpens"} & set(sent)


@pytest.mark.parametrize(
    ("status", "code", "error_class", "status_code", "suppress"),
    [
        (422, 300, "permanent", 300, "invalid_address"),
        (422, 406, "permanent", 406, "hard_bounce"),
        (422, 402, "permanent", 402, None),  # invalid JSON: our bug, no retry helps
        (401, 10, "config", 10, None),
        (422, 10, "config", 10, None),
        (422, 400, "config", 400, None),
        (422, 401, "config", 401, None),
        (422, 405, "config", 405, None),
        (422, 412, "config", 412, None),
        (401, None, "config", 401, None),
        (429, 429, "rate_limited", 429, None),
        (429, None, "rate_limited", 429, None),
        (500, None, "transient", 500, None),
        (503, None, "transient", 503, None),
    ],
)
async def test_postmark_error_codes(
    http: httpx.AsyncClient,
    fake_provider: FakeProvider,
    status: int,
    code: int | None,
    error_class: str,
    status_code: int,
    suppress: str | None,
) -> None:
    body: dict[str, Any] = {"Message": "You tried to send to a recipient marked as inactive."}
    if code is not None:
        body["ErrorCode"] = code
    fake_provider.answer(status, body, {"Retry-After": "5"})

    result = await postmark_adapter(fake_provider, http).send(
        outbound("email", "ada@example.com", EMAIL)
    )

    assert_failure(result, error_class, status_code, suppress=suppress, retry_after=5)
    assert "marked as inactive" in (result.error or "")


async def test_an_error_code_in_a_200_is_not_a_send(
    http: httpx.AsyncClient, fake_provider: FakeProvider
) -> None:
    fake_provider.answer(200, {**ACCEPTED, "ErrorCode": 406, "Message": "Inactive recipient"})
    result = await postmark_adapter(fake_provider, http).send(outbound("email", "a@b.test", EMAIL))
    assert_failure(result, "permanent", 406, suppress="hard_bounce")


async def test_timeouts_and_refused_connections_are_transient(
    http: httpx.AsyncClient, fake_provider: FakeProvider
) -> None:
    fake_provider.answer(200, ACCEPTED)
    fake_provider.delay = 1.0
    http.timeout = httpx.Timeout(0.2)
    adapter = postmark_adapter(fake_provider, http)
    result = await adapter.send(outbound("email", "ada@example.com", EMAIL))
    assert_failure(result, "transient", None)
    assert "in time" in (result.error or "")

    fake_provider.stop()  # nothing listens there any more
    assert_failure(await adapter.send(outbound("email", "a@b.test", EMAIL)), "transient", None)


async def test_content_of_another_channel_is_refused_without_a_call(
    http: httpx.AsyncClient, fake_provider: FakeProvider
) -> None:
    result = await postmark_adapter(fake_provider, http).send(outbound("email", "a@b.test", SMS))
    assert_failure(result, "permanent", None)
    assert not fake_provider.requests
