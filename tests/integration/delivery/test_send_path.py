"""The send path end to end: API → dispatch → deliver → a provider speaking its protocol.

Real PostgreSQL and Redis, real arq workers (burst mode, in-process), a real aiosmtpd server,
local HTTP servers speaking Twilio's and FCM's protocols, and a webhook receiver verifying
signatures with the reference `standardwebhooks` package.
"""

from __future__ import annotations

import email
import email.policy
import json
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from threading import Thread
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from standardwebhooks.webhooks import Webhook

from app.runtime import ServiceUrls
from tests.fakes import FakeProvider, Mailbox, QueueingHTTPServer
from tests.send_path import drain, notification, notify, put_recipient, put_template, workers
from tests.support import TenantKey, settings_for


class Receiver:
    """A tenant's webhook endpoint: keeps every request it gets."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = QueueingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/herald"
        Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    hook = Receiver()
    yield hook
    hook.server.shutdown()
    hook.server.server_close()


async def test_email_reaches_a_real_smtp_server(
    client: httpx.AsyncClient,
    tenant: TenantKey,
    service_urls: ServiceUrls,
    mailbox: tuple[Mailbox, int],
) -> None:
    box, port = mailbox
    provider = {
        "channel": "email",
        "provider": "smtp",
        "name": "local relay",
        "options": {
            "host": "127.0.0.1",
            "port": port,
            "security": "none",
            "from_email": "hi@acme.test",
        },
    }
    assert (
        await client.post("/v1/providers", headers=tenant.headers, json=provider)
    ).status_code == 201
    await put_template(
        client,
        tenant,
        "shipped",
        {
            "email": {
                "subject": "Order {{ order }} shipped",
                "text": "Hi {{ recipient.data.name }}, order {{ order }} is on its way.",
                "html": "<p>Hi {{ recipient.data.name }}, order <b>{{ order }}</b> shipped.</p>",
            }
        },
    )
    await put_recipient(client, tenant, "ada", email="ada@example.com", data={"name": "Ada <3"})

    accepted = await notify(client, tenant, template="shipped", to=["ada"], data={"order": 42})
    assert accepted["status"] == "accepted"
    settings = settings_for(
        service_urls.database_url, service_urls.redis_url, HERALD_ALLOW_PRIVATE_URLS="true"
    )
    async with workers(settings) as ctx:
        assert await drain(ctx, service_urls.redis_url) >= 2  # dispatch, then one delivery batch

    assert len(box.received) == 1
    envelope = box.received[0]
    assert envelope.rcpt_tos == ["ada@example.com"]
    mail = email.message_from_bytes(envelope.original_content or b"", policy=email.policy.default)
    assert mail["Subject"] == "Order 42 shipped"
    assert mail["To"] == "ada@example.com"
    assert "hi@acme.test" in mail["From"]
    text = mail.get_body(("plain",))
    html = mail.get_body(("html",))
    assert text is not None and "Hi Ada <3, order 42" in text.get_content()
    assert html is not None and "Hi Ada &lt;3, order <b>42</b> shipped" in html.get_content()

    view = await notification(client, tenant, accepted["id"])
    assert view["status"] == "dispatched"
    assert view["counts"] == {"sent": 1}
    [message] = view["messages"]
    assert (message["channel"], message["provider"], message["attempts"]) == ("email", "smtp", 1)
    assert mail["X-Herald-Message-Id"] == message["id"]


async def test_webhook_channel_is_signed_and_verifiable(
    client: httpx.AsyncClient, tenant: TenantKey, service_urls: ServiceUrls, receiver: Receiver
) -> None:
    created = await client.post(
        "/v1/providers",
        headers=tenant.headers,
        json={"channel": "webhook", "provider": "webhook", "name": "hooks"},
    )
    assert created.status_code == 201, created.text
    secret = created.json()["secret"]
    await put_template(
        client,
        tenant,
        "order-event",
        {"webhook": {"body": {"event": "order.paid", "order": "{{ order }}"}}},
    )
    await put_recipient(client, tenant, "shop-1", webhook_url=receiver.url)
    accepted = await notify(
        client, tenant, template="order-event", to=["shop-1"], data={"order": 7}
    )
    settings = settings_for(
        service_urls.database_url, service_urls.redis_url, HERALD_ALLOW_PRIVATE_URLS="true"
    )
    async with workers(settings) as ctx:
        await drain(ctx, service_urls.redis_url)

    [(headers, body)] = receiver.requests
    payload = Webhook(secret).verify(body, headers)  # raises on a bad signature
    assert payload == {"event": "order.paid", "order": "7"}
    [message] = (await notification(client, tenant, accepted["id"]))["messages"]
    assert headers["webhook-id"] == message["id"]
    assert message["status"] == "sent"


async def test_webhook_to_a_private_address_is_refused_by_default(
    client: httpx.AsyncClient, tenant: TenantKey, service_urls: ServiceUrls, receiver: Receiver
) -> None:
    await client.post(
        "/v1/providers",
        headers=tenant.headers,
        json={"channel": "webhook", "provider": "webhook", "name": "hooks"},
    )
    await put_template(client, tenant, "ssrf", {"webhook": {"body": {"event": "x"}}})
    await put_recipient(client, tenant, "internal", webhook_url=receiver.url)
    accepted = await notify(client, tenant, template="ssrf", to=["internal"])
    async with workers(settings_for(service_urls.database_url, service_urls.redis_url)) as ctx:
        await drain(ctx, service_urls.redis_url)
    assert receiver.requests == []
    [message] = (await notification(client, tenant, accepted["id"]))["messages"]
    assert message["status"] == "failed"
    assert message["error_class"] == "permanent"


def _service_account(token_uri: str) -> dict[str, Any]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return {
        "type": "service_account",
        "project_id": "herald-e2e",
        "client_email": "push@herald-e2e.iam.gserviceaccount.com",
        "private_key": pem,
        "token_uri": token_uri,
    }


async def test_sms_and_push_through_twilio_and_fcm_protocol_servers(
    client: httpx.AsyncClient, tenant: TenantKey, service_urls: ServiceUrls
) -> None:
    twilio, google = FakeProvider().start(), FakeProvider().start()
    try:
        twilio.answer_path("/2010-04-01/", 201, {"sid": "SM" + "a" * 32, "status": "queued"})
        google.answer_path("/token", 200, {"access_token": "ya29.e2e", "expires_in": 3600})
        google.answer_path("/v1/projects/", 200, {"name": "projects/herald-e2e/messages/0:1"})
        sid = "AC" + "1" * 32
        for config in (
            {
                "channel": "sms",
                "provider": "twilio",
                "name": "twilio",
                "credentials": {"account_sid": sid, "auth_token": "tw-secret"},
                "options": {"from_number": "+15005550006"},
            },
            {
                "channel": "push",
                "provider": "fcm",
                "name": "fcm",
                "credentials": {"service_account": _service_account(f"{google.url}/token")},
            },
        ):
            response = await client.post("/v1/providers", headers=tenant.headers, json=config)
            assert response.status_code == 201, response.text
        await put_template(
            client,
            tenant,
            "otp",
            {
                "sms": {"text": "Your code is {{ code }}"},
                "push": {
                    "title": "Code",
                    "body": "Your code is {{ code }}",
                    "data": {"code": "{{ code }}"},
                },
            },
            category="security",
        )
        await put_recipient(
            client,
            tenant,
            "grace",
            phone="+1 415 555 0123",
            push_tokens=[{"provider": "fcm", "token": "device-1"}],
        )
        accepted = await notify(
            client,
            tenant,
            template="otp",
            to=["grace"],
            data={"code": "9876"},
            priority="high",
            category="security",
        )
        settings = settings_for(
            service_urls.database_url,
            service_urls.redis_url,
            HERALD_PROVIDER_BASE_URLS=f"twilio={twilio.url},fcm={google.url},google_oauth={google.url}",
        )
        async with workers(settings) as ctx:
            await drain(ctx, service_urls.redis_url)
    finally:
        twilio.stop()
        google.stop()

    [(_, path, headers, body)] = twilio.requests
    assert path == f"/2010-04-01/Accounts/{sid}/Messages.json"
    form = parse_qs(body.decode())
    assert form["To"] == ["+14155550123"] and form["Body"] == ["Your code is 9876"]
    assert headers["authorization"].startswith("Basic ")

    sends = [r for r in google.requests if r[1].startswith("/v1/projects/herald-e2e/messages:send")]
    [(_, _, push_headers, push_body)] = sends
    assert push_headers["authorization"] == "Bearer ya29.e2e"
    message = json.loads(push_body)["message"]
    assert message["token"] == "device-1"
    assert message["notification"] == {"title": "Code", "body": "Your code is 9876"}

    view = await notification(client, tenant, accepted["id"])
    assert view["counts"] == {"sent": 2}
    by_channel = {m["channel"]: m for m in view["messages"]}
    assert by_channel["sms"]["provider_message_id"] == "SM" + "a" * 32
    assert by_channel["push"]["provider_message_id"] == "projects/herald-e2e/messages/0:1"
