"""The webhook channel against a local receiver that verifies signatures with the reference
`standardwebhooks` package: signatures, stable ids across retries, the answer table,
private addresses, unreachable and slow endpoints, generated secrets.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from app.providers.base import SendResult
from app.providers.credentials import normalize
from app.providers.standard_webhooks import signature_headers
from tests.fakes import FakeProvider
from tests.integration.providers.adapters.helpers import (
    HOOK,
    STRICT,
    adapter_for,
    assert_failure,
    outbound,
)
from tests.support import free_port

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
