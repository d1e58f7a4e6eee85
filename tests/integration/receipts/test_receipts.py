"""POST /webhooks/providers/{id} end to end on PostgreSQL: each scheme verified with its
config's secret (signatures made here or by the providers' SDKs, never by Herald's
verifiers), stored with its verdict, a replay and a refusal changing nothing, messages moved
forward only whatever the order events come in, suppressions and tenants' events from what
providers report, the timeline on GET /v1/messages/{id}, and tenants kept apart."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from litestar import Litestar
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from standardwebhooks.webhooks import Webhook
from twilio.request_validator import RequestValidator

from app.analytics.service import overview
from app.db import utcnow
from app.ids import uuid7
from app.notifications.models import Message, Notification
from app.receipts.api import REFUSED_STORED_PER_MINUTE
from app.receipts.models import MessageEvent, Receipt
from app.receipts.progress import RANK
from app.recipients.models import Recipient, Suppression
from app.settings import Settings
from app.webhooks.models import WebhookEndpoint, WebhookEvent
from jobs.cron import expire_logs
from tests.integration.webhooks.endpoints import endpoint_at
from tests.send_path import workers
from tests.support import TenantKey, key_of
from tests.unit.receipts.test_sns import CertificateServer, SigningKey, _certificate, _pem

TOPIC = "arn:aws:sns:eu-west-1:123456789012:herald-events"


class SendgridSigner:
    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        public = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.public = base64.b64encode(public).decode()

    def headers(self, body: bytes, timestamp: int | None = None) -> dict[str, str]:
        stamp = str(int(time.time()) if timestamp is None else timestamp)
        signature = self.key.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        return {
            "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
            "X-Twilio-Email-Event-Webhook-Timestamp": stamp,
            "content-type": "application/json",
        }


async def provider(client: httpx.AsyncClient, owner: TenantKey, **config: Any) -> str:
    response = await client.post("/v1/providers", headers=owner.headers, json=config)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return str(body["id"])


async def sendgrid_config(
    client: httpx.AsyncClient, owner: TenantKey, signer: SendgridSigner
) -> str:
    return await provider(
        client,
        owner,
        channel="email",
        provider="sendgrid",
        name="SendGrid",
        credentials={"api_key": "SG.x", "webhook_verification_key": signer.public},
        options={"from_email": "hello@acme.test"},
    )


@dataclass(frozen=True)
class Sent:
    id: uuid.UUID
    address: str


async def messages(
    session: AsyncSession, owner: TenantKey, n: int, *, channel: str = "email"
) -> list[Sent]:
    """n sent live messages of one notification, each to a recipient of its own."""
    notification = Notification(
        id=uuid7(),
        tenant_id=owner.tenant_id,
        mode="live",
        request_hash="x",
        template_key="t",
        template_version=1,
        category="marketing",
        channels=[channel],
        audience={},
        data={},
        priority="normal",
        status="dispatched",
        completed_at=utcnow(),
    )
    session.add(notification)
    await session.flush()  # messages name it without a mapped relationship
    made = []
    for i in range(n):
        address = f"user{i}@example.com" if channel == "email" else f"+1555000{i:04d}"
        recipient = Recipient(
            id=uuid7(),
            tenant_id=owner.tenant_id,
            mode="live",
            external_id=f"user-{i}",
            **({"email": address} if channel == "email" else {"phone": address}),
        )
        session.add(recipient)
        made.append(
            Message(
                id=uuid7(),
                notification_id=notification.id,
                tenant_id=owner.tenant_id,
                mode="live",
                recipient_id=recipient.id,
                channel=channel,
                address=address,
                status="sent",
            )
        )
    session.add_all(made)
    await session.commit()
    return [Sent(m.id, m.address) for m in made]


def sendgrid_event(message: Sent, event: str, **extra: Any) -> dict[str, Any]:
    return {
        "email": message.address,
        "timestamp": int(time.time()),
        "event": event,
        "sg_event_id": uuid.uuid4().hex,
        "sg_message_id": f"sg-{message.id}",
        "herald_message_id": str(message.id),
        **extra,
    }


async def status_of(session: AsyncSession, message: Sent) -> str:
    session.expire_all()
    status = await session.scalar(select(Message.status).where(Message.id == message.id))
    assert status is not None
    return status


async def post_sendgrid(
    client: httpx.AsyncClient, config_id: str, signer: SendgridSigner, events: list[Any]
) -> httpx.Response:
    body = json.dumps(events).encode() + b"\r\n"
    return await client.post(
        f"/webhooks/providers/{config_id}", content=body, headers=signer.headers(body)
    )


async def test_sendgrid_events_move_messages_suppress_and_show_on_the_timeline(
    client: httpx.AsyncClient, session: AsyncSession, tenant: TenantKey
) -> None:
    signer = SendgridSigner()
    config_id = await sendgrid_config(client, tenant, signer)
    opened, bounced = await messages(session, tenant, 2)
    response = await post_sendgrid(
        client,
        config_id,
        signer,
        [
            sendgrid_event(opened, "open"),
            sendgrid_event(opened, "delivered"),
            sendgrid_event(bounced, "bounce", type="bounce", reason="550 5.1.1 unknown"),
        ],
    )
    assert response.status_code == 200, response.text
    assert response.json()["received"] == 3 and response.json()["new"] == 3
    assert await status_of(session, opened) == "opened"
    assert await status_of(session, bounced) == "bounced"
    # The overview counts the open as a delivery and the bounce as a failure, not a dead letter.
    today = (
        await overview(session, tenant_id=tenant.tenant_id, mode="live", today=utcnow().date())
    ).today_totals
    await session.commit()
    assert (today.sent, today.delivered, today.failed, today.dead_lettered) == (2, 1, 1, 0)
    suppressed = await session.scalar(
        select(Suppression).where(Suppression.tenant_id == tenant.tenant_id)
    )
    assert suppressed is not None
    assert (suppressed.address, suppressed.reason) == (bounced.address, "hard_bounce")

    shown = (await client.get(f"/v1/messages/{opened.id}", headers=tenant.headers)).json()
    assert shown["status"] == "opened"
    kinds = {(e["kind"], e["applied"]) for e in shown["events"]}
    assert kinds == {("opened", True), ("delivered", False)}
    receipt = await session.scalar(
        select(Receipt).where(Receipt.id == uuid.UUID(response.json()["receipt_id"]))
    )
    assert receipt is not None and receipt.verdict == "verified" and receipt.new_events == 3
    assert "x-twilio-email-event-webhook-signature" in receipt.headers


async def test_a_replay_is_answered_200_and_changes_nothing(
    client: httpx.AsyncClient, session: AsyncSession, tenant: TenantKey
) -> None:
    signer = SendgridSigner()
    config_id = await sendgrid_config(client, tenant, signer)
    [message] = await messages(session, tenant, 1)
    events = [sendgrid_event(message, "delivered")]
    assert (await post_sendgrid(client, config_id, signer, events)).status_code == 200
    again = await post_sendgrid(client, config_id, signer, events)
    assert again.status_code == 200 and again.json()["new"] == 0
    receipt = await session.get(Receipt, uuid.UUID(again.json()["receipt_id"]))
    assert receipt is not None and receipt.verdict == "replayed"
    count = (
        select(func.count()).select_from(MessageEvent).where(MessageEvent.message_id == message.id)
    )
    assert await session.scalar(count) == 1


async def test_refused_requests_are_401_stored_and_change_nothing(
    client: httpx.AsyncClient, session: AsyncSession, tenant: TenantKey
) -> None:
    signer, stranger = SendgridSigner(), SendgridSigner()
    config_id = await sendgrid_config(client, tenant, signer)
    [message] = await messages(session, tenant, 1)
    body = json.dumps([sendgrid_event(message, "delivered")]).encode()
    path = f"/webhooks/providers/{config_id}"
    tampered = body.replace(b"delivered", b"bounce")
    cases = {
        "tampered": (tampered, signer.headers(body)),
        "wrong key": (body, stranger.headers(body)),
        "stale": (body, signer.headers(body, int(time.time()) - 2 * 86_400)),
        "future": (body, signer.headers(body, int(time.time()) + 3_600 * 26)),
        "unsigned": (body, {"content-type": "application/json"}),
    }
    for name, (content, headers) in cases.items():
        response = await client.post(path, content=content, headers=headers)
        assert response.status_code == 401, name
        assert response.headers["content-type"].startswith("application/problem+json")
    assert await status_of(session, message) == "sent"
    verdicts = await session.scalars(
        select(Receipt.verdict).where(Receipt.provider_config_id == uuid.UUID(config_id))
    )
    assert sorted(verdicts) == ["bad_signature"] * 3 + ["stale"] * 2
    events = select(func.count()).where(MessageEvent.provider_config_id == uuid.UUID(config_id))
    assert await session.scalar(events) == 0


async def test_an_unknown_config_is_404_and_its_body_not_kept(
    client: httpx.AsyncClient, session: AsyncSession
) -> None:
    unknown = uuid.uuid4()
    response = await client.post(f"/webhooks/providers/{unknown}", content=b"[]")
    assert response.status_code == 404
    receipt = await session.scalar(select(Receipt).where(Receipt.provider_config_id == unknown))
    assert receipt is not None and receipt.verdict == "unknown_config" and receipt.body is None


async def test_another_tenants_message_is_not_touched(
    client: httpx.AsyncClient, session: AsyncSession, tenant: TenantKey, other_tenant: TenantKey
) -> None:
    signer = SendgridSigner()
    config_id = await sendgrid_config(client, tenant, signer)
    [theirs] = await messages(session, other_tenant, 1)
    response = await post_sendgrid(
        client, config_id, signer, [sendgrid_event(theirs, "bounce", type="bounce")]
    )
    assert response.status_code == 200
    assert await status_of(session, theirs) == "sent"
    stored = await session.scalar(
        select(MessageEvent).where(
            MessageEvent.receipt_id == uuid.UUID(response.json()["receipt_id"])
        )
    )
    assert stored is not None and stored.message_id is None
    for owner in (tenant, other_tenant):
        suppressions = select(func.count()).where(Suppression.tenant_id == owner.tenant_id)
        assert await session.scalar(suppressions) == 0


ORDERED = ["processed", "delivered", "open", "click"]


async def test_status_never_moves_back_under_1000_shuffled_orders(
    client: httpx.AsyncClient, session: AsyncSession, tenant: TenantKey
) -> None:
    """1,000 messages, each given a random subset of its life's events (some twice), all
    posted in one shuffled stream cut into batches: each ends at its strongest event."""
    signer = SendgridSigner()
    config_id = await sendgrid_config(client, tenant, signer)
    made = await messages(session, tenant, 1_000)
    shuffle = random.Random(20261205)
    stream: list[dict[str, Any]] = []
    expected: dict[uuid.UUID, str] = {}
    kind_of = {
        "processed": "sent",
        "delivered": "delivered",
        "open": "opened",
        "click": "clicked",
        "spamreport": "complained",
    }
    for message in made:
        chosen = shuffle.sample(ORDERED, shuffle.randint(1, 4))
        if shuffle.random() < 0.1:
            chosen.append("spamreport")
        events = [sendgrid_event(message, name) for name in chosen]
        events += [dict(e) for e in shuffle.sample(events, shuffle.randint(0, len(events)))]
        stream += events
        expected[message.id] = max(("sent", *(kind_of[n] for n in chosen)), key=RANK.__getitem__)
    shuffle.shuffle(stream)
    for start in range(0, len(stream), 500):
        response = await post_sendgrid(client, config_id, signer, stream[start : start + 500])
        assert response.status_code == 200, response.text
    session.expire_all()
    found = dict(
        (
            await session.execute(
                select(Message.id, Message.status).where(Message.id.in_(expected))
            )
        ).all()
    )
    assert found == expected


async def test_tenants_hear_of_what_receipts_change(
    client: httpx.AsyncClient, session: AsyncSession, tenant: TenantKey, settings: Settings
) -> None:
    await endpoint_at(session, settings, tenant, "https://hooks.example.com/h")
    signer = SendgridSigner()
    config_id = await sendgrid_config(client, tenant, signer)
    delivered, complained = await messages(session, tenant, 2)
    await post_sendgrid(
        client,
        config_id,
        signer,
        [sendgrid_event(delivered, "delivered"), sendgrid_event(complained, "spamreport")],
    )
    written = (
        await session.execute(
            select(WebhookEvent.type, WebhookEvent.data).where(
                WebhookEvent.tenant_id == tenant.tenant_id
            )
        )
    ).all()
    types = sorted(t for t, _ in written)
    assert types == ["message.complained", "message.delivered", "recipient.suppressed"]
    suppressed = next(d for t, d in written if t == "recipient.suppressed")
    assert suppressed["reason"] == "complaint" and suppressed["recipient"] == "user-1"
    # Leave no events for other tests' senders to deliver (the database is shared).
    await session.execute(delete(WebhookEvent).where(WebhookEvent.tenant_id == tenant.tenant_id))
    await session.execute(
        delete(WebhookEndpoint).where(WebhookEndpoint.tenant_id == tenant.tenant_id)
    )
    await session.commit()


async def test_twilio_callbacks_signed_by_its_sdk(
    client: httpx.AsyncClient, session: AsyncSession, tenant: TenantKey, settings: Settings
) -> None:
    token = "twilio-auth-token"
    config_id = await provider(
        client,
        tenant,
        channel="sms",
        provider="twilio",
        name="Twilio",
        credentials={"account_sid": "AC" + "0" * 32, "auth_token": token},
        options={"from_number": "+15550001111"},
    )
    delivered, stopped = await messages(session, tenant, 2, channel="sms")
    for message, fields in (
        (delivered, {"MessageStatus": "delivered"}),
        (stopped, {"MessageStatus": "undelivered", "ErrorCode": "21610"}),
    ):
        query = urlencode({"herald_message_id": str(message.id)})
        path = f"/webhooks/providers/{config_id}?{query}"
        params = {"MessageSid": f"SM{message.id.hex}", "AccountSid": "AC" + "0" * 32, **fields}
        signature = RequestValidator(token).compute_signature(
            f"{settings.public_url}{path}", params
        )
        response = await client.post(path, data=params, headers={"X-Twilio-Signature": signature})
        assert response.status_code == 200, response.text
        forged = await client.post(
            path,
            data={**params, "MessageStatus": "read"},
            headers={"X-Twilio-Signature": signature},
        )
        assert forged.status_code == 401
    assert await status_of(session, delivered) == "delivered"
    assert await status_of(session, stopped) == "undelivered"
    reasons = await session.scalars(
        select(Suppression.reason).where(Suppression.address == stopped.address)
    )
    assert list(reasons) == ["unsubscribed"]


async def test_mailgun_postmark_and_standard_webhooks(
    client: httpx.AsyncClient, session: AsyncSession, tenant: TenantKey
) -> None:
    signing_key = "mailgun-signing-key"
    mailgun_id = await provider(
        client,
        tenant,
        channel="email",
        provider="mailgun",
        name="Mailgun",
        credentials={"api_key": "key-x", "webhook_signing_key": signing_key},
        options={"from_email": "a@acme.test", "domain": "mg.acme.test"},
    )
    postmark_id = await provider(
        client,
        tenant,
        channel="email",
        provider="postmark",
        name="Postmark",
        credentials={
            "server_token": "pm",
            "webhook_username": "herald",
            "webhook_password": "s3cret-pass",
        },
        options={"from_email": "a@acme.test"},
    )
    created = await client.post(
        "/v1/providers",
        headers=tenant.headers,
        json={"channel": "webhook", "provider": "webhook", "name": "Own", "credentials": {}},
    )
    assert created.status_code == 201, created.text
    made, hook_secret = created.json()["id"], created.json()["secret"]  # shown once
    assert hook_secret.startswith("whsec_")
    a, b, c = await messages(session, tenant, 3)

    stamp, token_value = str(int(time.time())), uuid.uuid4().hex
    mac = hmac.new(signing_key.encode(), (stamp + token_value).encode(), hashlib.sha256).hexdigest()
    mailgun_body = {
        "signature": {"timestamp": stamp, "token": token_value, "signature": mac},
        "event-data": {
            "event": "failed",
            "severity": "permanent",
            "timestamp": time.time(),
            "user-variables": {"herald_message_id": str(a.id)},
        },
    }
    response = await client.post(f"/webhooks/providers/{mailgun_id}", json=mailgun_body)
    assert response.status_code == 200, response.text
    mailgun_body["signature"]["signature"] = "0" * 64  # type: ignore[index]
    assert (
        await client.post(f"/webhooks/providers/{mailgun_id}", json=mailgun_body)
    ).status_code == 401

    record = {
        "RecordType": "Delivery",
        "MessageID": "pm-1",
        "DeliveredAt": "2026-12-05T06:00:00Z",
        "Metadata": {"herald_message_id": str(b.id)},
    }
    auth = httpx.BasicAuth("herald", "s3cret-pass")
    response = await client.post(f"/webhooks/providers/{postmark_id}", json=record, auth=auth)
    assert response.status_code == 200, response.text
    wrong = httpx.BasicAuth("herald", "guess")
    assert (
        await client.post(f"/webhooks/providers/{postmark_id}", json=record, auth=wrong)
    ).status_code == 401

    assert await status_of(session, a) == "bounced"
    assert await status_of(session, b) == "delivered"
    body = json.dumps({"type": "message.delivered", "data": {"message_id": str(c.id)}})
    at = utcnow()
    headers = Webhook(hook_secret).sign("msg_1", at, body)
    signed = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": headers,
    }
    response = await client.post(f"/webhooks/providers/{made}", content=body, headers=signed)
    assert response.status_code == 200, response.text
    assert await status_of(session, c) == "delivered"


@pytest.fixture
def sns_server(app: Litestar) -> Iterator[CertificateServer]:
    """A local HTTPS server standing in for SNS, which the app trusts and allows for the test."""
    from app.receipts import sns

    server = CertificateServer()
    saved = app.state.sns_certificates, app.state.sns_origins
    app.state.sns_certificates = sns.CertificateCache(server.client())
    app.state.sns_origins = server.allowed
    yield server
    app.state.sns_certificates, app.state.sns_origins = saved
    server.stop()


async def test_ses_events_through_sns_and_the_subscription_confirmed(
    client: httpx.AsyncClient,
    session: AsyncSession,
    tenant: TenantKey,
    sns_server: CertificateServer,
) -> None:
    key = SigningKey()
    key.pem = _pem(_certificate(key.key, "sns.amazonaws.test", around=datetime.now(UTC)))
    sns_server.files["/cert.pem"] = key.pem
    config_id = await provider(
        client,
        tenant,
        channel="email",
        provider="ses",
        name="SES",
        credentials={"access_key_id": "AKIAIOSFODNN7EXAMPLE", "secret_access_key": "secret"},
        options={"from_email": "a@acme.test", "region": "eu-west-1", "sns_topic_arns": [TOPIC]},
    )
    path = f"/webhooks/providers/{config_id}"
    stamp = utcnow().strftime("%Y-%m-%dT%H:%M:%S.000Z")
    confirm = {
        "Type": "SubscriptionConfirmation",
        "MessageId": "c-1",
        "Token": "tok",
        "TopicArn": TOPIC,
        "Message": "confirm",
        "SubscribeURL": f"{sns_server.origin}/confirm?Token=tok",
        "Timestamp": stamp,
        "SignatureVersion": "2",
        "SigningCertURL": f"{sns_server.origin}/cert.pem",
    }
    confirm["Signature"] = key.sign(confirm, "2")
    response = await client.post(
        path, content=json.dumps(confirm), headers={"content-type": "text/plain"}
    )
    assert response.status_code == 200, response.text
    assert sns_server.gets["/confirm?Token=tok"] == 1

    [message] = await messages(session, tenant, 1)
    ses = {
        "eventType": "Bounce",
        "bounce": {"bounceType": "Permanent", "bouncedRecipients": []},
        "mail": {"messageId": "ses-1", "tags": {"herald_message_id": [str(message.id)]}},
    }
    note = {
        "Type": "Notification",
        "MessageId": "n-1",
        "TopicArn": TOPIC,
        "Message": json.dumps(ses),
        "Timestamp": stamp,
        "SignatureVersion": "1",
        "SigningCertURL": f"{sns_server.origin}/cert.pem",
    }
    note["Signature"] = key.sign(note, "1")
    response = await client.post(
        path, content=json.dumps(note), headers={"content-type": "text/plain"}
    )
    assert response.status_code == 200, response.text
    assert await status_of(session, message) == "bounced"
    note["TopicArn"] = "arn:aws:sns:eu-west-1:999999999999:theirs"
    note["Signature"] = key.sign(note, "1")
    refused = await client.post(
        path, content=json.dumps(note), headers={"content-type": "text/plain"}
    )
    assert refused.status_code == 401


async def test_receipts_past_their_retention_are_deleted_with_their_events(
    client: httpx.AsyncClient, session: AsyncSession, tenant: TenantKey, settings: Settings
) -> None:
    signer = SendgridSigner()
    config_id = await sendgrid_config(client, tenant, signer)
    [message] = await messages(session, tenant, 1)
    kept = await post_sendgrid(client, config_id, signer, [sendgrid_event(message, "delivered")])
    gone = await post_sendgrid(client, config_id, signer, [sendgrid_event(message, "open")])
    receipt = await session.get(Receipt, uuid.UUID(gone.json()["receipt_id"]))
    assert receipt is not None
    # The tenant's plan (free) keeps receipts 7 days from their arrival.
    assert (receipt.retain_until - receipt.received_at).days == 7
    receipt.retain_until = utcnow() - timedelta(seconds=1)
    await session.commit()

    async with workers(settings) as ctx:
        assert await expire_logs(ctx) >= 1
    session.expire_all()
    assert await session.get(Receipt, uuid.UUID(gone.json()["receipt_id"])) is None
    assert await session.get(Receipt, uuid.UUID(kept.json()["receipt_id"])) is not None
    kinds = await session.scalars(
        select(MessageEvent.kind).where(MessageEvent.message_id == message.id)
    )
    assert list(kinds) == ["delivered"]


async def test_refusals_beyond_the_minutes_allowance_are_answered_not_stored(
    client: httpx.AsyncClient, session: AsyncSession, tenant: TenantKey
) -> None:
    signer = SendgridSigner()
    config_id = await sendgrid_config(client, tenant, signer)
    if time.time() % 60 > 45:  # the allowance is per clock minute: all in one
        await asyncio.sleep(61 - time.time() % 60)
    path = f"/webhooks/providers/{config_id}"
    for _ in range(REFUSED_STORED_PER_MINUTE + 5):
        refused = await client.post(path, content=b"[]", headers={"content-type": "text/plain"})
        assert refused.status_code == 401
    count = select(func.count()).where(Receipt.provider_config_id == uuid.UUID(config_id))
    assert await session.scalar(count) == REFUSED_STORED_PER_MINUTE
    # A genuine request is always taken.
    [message] = await messages(session, tenant, 1)
    answer = await post_sendgrid(client, config_id, signer, [sendgrid_event(message, "delivered")])
    assert answer.status_code == 200
    assert await session.scalar(count) == REFUSED_STORED_PER_MINUTE + 1


async def test_a_provider_config_names_its_receipts_url(
    client: httpx.AsyncClient, tenant: TenantKey, settings: Settings
) -> None:
    signer = SendgridSigner()
    config_id = await sendgrid_config(client, tenant, signer)
    shown = (await client.get(f"/v1/providers/{config_id}", headers=tenant.headers)).json()
    assert shown["receipts_url"] == f"{settings.public_url}/webhooks/providers/{config_id}"


async def test_a_tenant_reads_its_receipts_and_no_one_elses(
    client: httpx.AsyncClient,
    session: AsyncSession,
    tenant: TenantKey,
    other_tenant: TenantKey,
) -> None:
    signer = SendgridSigner()
    config_id = await sendgrid_config(client, tenant, signer)
    [message] = await messages(session, tenant, 1)
    taken = await post_sendgrid(client, config_id, signer, [sendgrid_event(message, "delivered")])
    body = b"[]"
    await client.post(f"/webhooks/providers/{config_id}", content=body, headers={"a": "b"})

    listed = await client.get(
        "/v1/receipts", headers=tenant.headers, params={"provider_config_id": config_id}
    )
    assert listed.status_code == 200, listed.text
    assert [r["verdict"] for r in listed.json()["data"]] == ["bad_signature", "verified"]
    refused = await client.get(
        "/v1/receipts", headers=tenant.headers, params={"verdict": "bad_signature"}
    )
    assert {r["verdict"] for r in refused.json()["data"]} == {"bad_signature"}

    path = f"/v1/receipts/{taken.json()['receipt_id']}"
    shown = (await client.get(path, headers=tenant.headers)).json()
    assert shown["verdict"] == "verified" and shown["body_truncated"] is False
    assert json.loads(shown["body"])[0]["herald_message_id"] == str(message.id)
    [event] = shown["events"]
    assert (event["kind"], event["message_id"], event["applied"]) == (
        "delivered",
        str(message.id),
        True,
    )
    assert (await client.get(path, headers=other_tenant.headers)).status_code == 404
    theirs = await client.get("/v1/receipts", headers=other_tenant.headers)
    assert theirs.json()["data"] == []
    test_key = await key_of(session, tenant, "test")
    assert (await client.get("/v1/receipts", headers=test_key.headers)).status_code == 403
    bad = await client.get("/v1/receipts", headers=tenant.headers, params={"verdict": "nope"})
    assert bad.status_code in (400, 422)


async def test_batches_naming_the_same_messages_side_by_side_never_deadlock(
    client: httpx.AsyncClient, session: AsyncSession, tenant: TenantKey
) -> None:
    """Four batches at once, each with an event for every one of 300 messages in its own
    order, and each repeating some of the others' events: all answered, each event once."""
    signer = SendgridSigner()
    config_id = await sendgrid_config(client, tenant, signer)
    made = await messages(session, tenant, 300)
    shuffle = random.Random(7)
    names = ["delivered", "open", "click", "processed"]
    batches = [[sendgrid_event(m, name) for m in made] for name in names]
    for batch in batches:
        shuffle.shuffle(batch)
    shared = [dict(e) for e in batches[0][:50]]
    batches = [batch + (shared if n else []) for n, batch in enumerate(batches)]
    answers = await asyncio.gather(
        *(post_sendgrid(client, config_id, signer, batch) for batch in batches)
    )
    assert [a.status_code for a in answers] == [200] * 4
    assert sum(a.json()["new"] for a in answers) == 4 * 300
    session.expire_all()
    statuses = await session.scalars(
        select(Message.status).where(Message.id.in_([m.id for m in made]))
    )
    assert set(statuses) == {"clicked"}
