"""The sandbox provider: outcomes chosen by address, everything else accepted on every
channel, and the slow addresses.
"""

from __future__ import annotations

import time
import uuid

import httpx
import pytest
import respx

from app.providers.http import new_client
from app.providers.service import build_adapter, sandbox_route
from app.templates.content import (
    Content,
    InboxContent,
)
from tests.integration.providers.adapters.helpers import (
    DEVICE,
    EMAIL,
    HOOK,
    OPEN,
    PUSH,
    SMS,
    STRICT,
    assert_failure,
    outbound,
)


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
