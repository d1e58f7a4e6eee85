"""Mailgun (e-mail) against its protocol, faked at the wire with respx: the exact request it
receives and the error table of PROVIDERS.md.
"""

from __future__ import annotations

from urllib.parse import parse_qs

import httpx
import pytest
import respx

from app.providers.base import SendResult
from tests.integration.providers.adapters.helpers import (
    EMAIL,
    SENDER,
    UNSUBSCRIBE,
    UNSUBSCRIBE_TARGETS,
    adapter_for,
    assert_failure,
    outbound,
)

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
        "h:List-Unsubscribe": [UNSUBSCRIBE_TARGETS],
        "h:List-Unsubscribe-Post": ["List-Unsubscribe=One-Click"],
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
