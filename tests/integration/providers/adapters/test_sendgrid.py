"""SendGrid (e-mail) against its protocol, faked at the wire with respx: the exact request
it receives, the error table of PROVIDERS.md, timeouts and refused connections, and
content of another channel refused without a call.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest
import respx

from app.providers.base import SendResult
from tests.integration.providers.adapters.helpers import (
    EMAIL,
    SENDER,
    SMS,
    UNSUBSCRIBE,
    UNSUBSCRIBE_TARGETS,
    adapter_for,
    assert_failure,
    outbound,
)

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
            "List-Unsubscribe": UNSUBSCRIBE_TARGETS,
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
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
