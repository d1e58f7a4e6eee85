"""Amazon SES events through SNS: RSA signatures (versions 1 and 2) under a certificate made
here and served by a local HTTPS server, the origin and topic allow-lists, the certificate
cache, subscription confirmation, and every SES event type."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import re
import ssl
import tempfile
import threading
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from app.receipts.events import Parsed
from app.receipts.sns import (
    SNS_ORIGINS,
    CertificateCache,
    allowed_url,
    confirm_subscription,
    receive_sns,
)
from tests.unit.receipts import inbound

NOW = dt.datetime(2026, 3, 4, 5, 6, 7, tzinfo=dt.UTC)
TOLERANCE = dt.timedelta(minutes=5)
TOPIC = "arn:aws:sns:eu-west-1:123456789012:herald-ses-events"
HERALD_ID = uuid.UUID(int=1234)


def _certificate(
    key: Any, subject: str, *, ip: str | None = None, days: int = 1, around: dt.datetime = NOW
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(around - dt.timedelta(days=1))
        .not_valid_after(around + dt.timedelta(days=days))
    )
    if ip is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
            critical=False,
        )
    return builder.sign(key, hashes.SHA256())


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


class SigningKey:
    """An SNS signing key and its self-signed certificate."""

    def __init__(self, *, days: int = 1) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.pem = _pem(_certificate(self.key, "sns.amazonaws.test", days=days))

    def sign(self, message: dict[str, str], version: str) -> str:
        # The canonical string as AWS documents it, written out here independently.
        if message["Type"] == "Notification":
            names = ["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"]
        else:
            names = ["Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn"]
            names.append("Type")
        canonical = "".join(f"{name}\n{message[name]}\n" for name in names if name in message)
        # SignatureVersion 1 is SHA1withRSA: SNS's choice, not ours.
        algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()  # noqa: S303
        signature = self.key.sign(canonical.encode(), padding.PKCS1v15(), algorithm)
        return base64.b64encode(signature).decode()


class CertificateServer:
    """A local HTTPS server standing in for sns.<region>.amazonaws.com: serves signing
    certificates under /cert*, confirms subscriptions at /confirm, counts every GET."""

    def __init__(self) -> None:
        tls_key = ec.generate_private_key(ec.SECP256R1())
        # TLS checks the certificate against the real clock, the receipts against NOW.
        self.tls_certificate = _certificate(
            tls_key, "127.0.0.1", ip="127.0.0.1", around=dt.datetime.now(dt.UTC)
        )
        self.files: dict[str, bytes] = {}
        self.gets: Counter[str] = Counter()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.gets[self.path] += 1
                if self.path.startswith("/redirect"):
                    self.send_response(302)
                    self.send_header("location", "/cert-good.pem")
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                if self.path.startswith("/confirm"):
                    status, body = 200, b"<ConfirmSubscriptionResponse/>"
                else:
                    content = server.files.get(self.path.split("?")[0])
                    status, body = (200, content) if content is not None else (404, b"")
                self.send_response(status)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        # load_cert_chain reads files only; write the pair to a temporary folder.
        with tempfile.TemporaryDirectory() as folder:
            chain, key_file = Path(folder) / "tls.pem", Path(folder) / "tls.key"
            chain.write_bytes(_pem(self.tls_certificate))
            key_file.write_bytes(
                tls_key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
            context.load_cert_chain(chain, key_file)

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def get_request(self) -> tuple[Any, Any]:
                sock, address = self.socket.accept()
                return context.wrap_socket(
                    sock, server_side=True, do_handshake_on_connect=False
                ), address

            def finish_request(self, request, client_address):  # type: ignore[no-untyped-def]
                try:
                    request.do_handshake()
                except (ssl.SSLError, OSError):
                    return
                super().finish_request(request, client_address)

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.origin = f"https://127.0.0.1:{self.port}"
        self.allowed = re.compile(re.escape(self.origin))
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def client(self) -> httpx.AsyncClient:
        trust = ssl.create_default_context(cadata=_pem(self.tls_certificate).decode())
        return httpx.AsyncClient(verify=trust)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def server() -> Iterator[CertificateServer]:
    running = CertificateServer()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def signer(server: CertificateServer) -> SigningKey:
    key = SigningKey()
    server.files["/cert-good.pem"] = key.pem
    return key


@pytest.fixture
async def client(server: CertificateServer) -> AsyncIterator[httpx.AsyncClient]:
    async with server.client() as http:
        yield http


def ses_event(event_type: str, **fields: Any) -> dict[str, Any]:
    return {
        "eventType": event_type,
        "mail": {
            "timestamp": "2026-03-04T05:00:00.000Z",
            "messageId": "010f0190a1b2c3d4-aaaa-bbbb-cccc-000000000000-000000",
            "source": "sender@herald.example",
            "destination": ["recipient@example.com"],
            "tags": {"herald_message_id": [str(HERALD_ID)], "ses:configuration-set": ["h"]},
        },
        **fields,
    }


def notification(
    server: CertificateServer,
    signer: SigningKey,
    event: dict[str, Any] | str,
    *,
    version: str = "1",
    certificate: str = "/cert-good.pem",
    topic: str = TOPIC,
    timestamp: dt.datetime = NOW,
    message_id: str | None = None,
    **extra: str,
) -> dict[str, str]:
    message = {
        "Type": "Notification",
        "MessageId": message_id or str(uuid.uuid4()),
        "TopicArn": topic,
        "Message": event if isinstance(event, str) else json.dumps(event),
        "Timestamp": timestamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        **extra,
    }
    message["SignatureVersion"] = version
    message["Signature"] = signer.sign(message, version)
    message["SigningCertURL"] = (
        certificate if certificate.startswith("http") else server.origin + certificate
    )
    return message


def confirmation(
    server: CertificateServer, signer: SigningKey, kind: str = "SubscriptionConfirmation"
) -> dict[str, str]:
    message = {
        "Type": kind,
        "MessageId": str(uuid.uuid4()),
        "Token": "2336412f37fb687f5d51e6e241d09c805a5a57b30d712f794cc5f6a988666d92",
        "TopicArn": TOPIC,
        "Message": "You have chosen to subscribe to the topic.",
        "SubscribeURL": f"{server.origin}/confirm?Action=ConfirmSubscription&Token=2336",
        "Timestamp": "2026-03-04T05:06:00.000Z",
    }
    message["SignatureVersion"] = "2"
    message["Signature"] = signer.sign(message, "2")
    message["SigningCertURL"] = server.origin + "/cert-good.pem"
    return message


async def receive(
    server: CertificateServer,
    cache: CertificateCache,
    message: dict[str, Any] | bytes,
    *,
    at: dt.datetime = NOW,
    topics: tuple[str, ...] = (TOPIC,),
) -> Parsed:
    raw = message if isinstance(message, bytes) else json.dumps(message).encode()
    return await receive_sns(
        inbound(raw, {"content-type": "text/plain; charset=UTF-8"}, at=at),
        topics,
        cache,
        tolerance=TOLERANCE,
        origins=server.allowed,
    )


@pytest.mark.parametrize("version", ["1", "2"])
async def test_both_signature_versions_verify(
    server: CertificateServer, signer: SigningKey, client: httpx.AsyncClient, version: str
) -> None:
    message = notification(server, signer, ses_event("Delivery"), version=version)
    parsed = await receive(server, CertificateCache(client), message)
    assert parsed.verdict == "verified", parsed.reason
    [receipt] = parsed.events
    assert receipt.kind == "delivered"
    assert receipt.provider_event_id == message["MessageId"]
    assert receipt.message_id == HERALD_ID
    assert receipt.provider_message_id == "010f0190a1b2c3d4-aaaa-bbbb-cccc-000000000000-000000"


async def test_a_subject_is_signed_when_present(
    server: CertificateServer, signer: SigningKey, client: httpx.AsyncClient
) -> None:
    message = notification(server, signer, ses_event("Send"), Subject="Amazon SES Email Event")
    cache = CertificateCache(client)
    assert (await receive(server, cache, message)).verdict == "verified"
    message["Subject"] = "Another subject"
    assert (await receive(server, cache, message)).verdict == "bad_signature"


async def test_many_messages_fetch_the_certificate_once(
    server: CertificateServer, client: httpx.AsyncClient
) -> None:
    key = SigningKey()
    server.files["/cert-once.pem"] = key.pem
    cache = CertificateCache(client)
    for _ in range(5):
        message = notification(server, key, ses_event("Open"), certificate="/cert-once.pem")
        assert (await receive(server, cache, message)).verdict == "verified"
    assert server.gets["/cert-once.pem"] == 1


async def test_the_cache_is_bounded(server: CertificateServer, client: httpx.AsyncClient) -> None:
    key = SigningKey()
    server.files["/cert-lru.pem"] = key.pem
    cache = CertificateCache(client, max_entries=2)
    for version in ("a", "b", "c", "a"):
        message = notification(
            server, key, ses_event("Open"), certificate=f"/cert-lru.pem?v={version}"
        )
        assert (await receive(server, cache, message)).verdict == "verified"
    # `a` was the least recently used when `c` came: fetched again.
    assert server.gets["/cert-lru.pem?v=a"] == 2
    assert server.gets["/cert-lru.pem?v=b"] == 1


@pytest.mark.parametrize(
    "certificate",
    [
        "http://127.0.0.1:{port}/cert-good.pem",  # not https
        "https://127.0.0.2:{port}/cert-good.pem",  # another host
        "https://127.0.0.1:1/cert-good.pem",  # another port
        "https://user@127.0.0.1:{port}/cert-good.pem",
        "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-abc.pem",  # not allowed here
    ],
)
async def test_certificates_are_fetched_only_from_allowed_origins(
    server: CertificateServer, signer: SigningKey, client: httpx.AsyncClient, certificate: str
) -> None:
    before = sum(server.gets.values())
    url = certificate.format(port=server.port)
    message = notification(server, signer, ses_event("Delivery"), certificate=url)
    parsed = await receive(server, CertificateCache(client), message)
    assert parsed.verdict == "bad_signature"
    assert parsed.reason == "SigningCertURL is not on an allowed SNS host"
    assert sum(server.gets.values()) == before


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://sns.us-east-1.amazonaws.com/SimpleNotificationService-1.pem", True),
        ("https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-1.pem", True),
        ("https://SNS.US-EAST-1.AMAZONAWS.COM/x.pem", True),
        ("https://sns.us-east-1.amazonaws.com:443/x.pem", True),
        ("http://sns.us-east-1.amazonaws.com/x.pem", False),
        ("https://sns.us-east-1.amazonaws.com:8443/x.pem", False),
        ("https://sns.us-east-1.amazonaws.com.evil.example/x.pem", False),
        ("https://sns.us-east-1.amazonaws.com@evil.example/x.pem", False),
        ("https://evil.example/sns.us-east-1.amazonaws.com/x.pem", False),
        ("https://s3.us-east-1.amazonaws.com/x.pem", False),
        ("https://sns.us-east-1.amazonaws.com\\@evil.example/x.pem", False),
        ("https://sns.us-east-1.amazonaws.com:99999/x.pem", False),
        ("https://sns.us-east-1.amazonaws.com:0/x.pem", False),
        ("https://sn\u0455.us-east-1.amazonaws.com/x.pem", False),  # Cyrillic s
        ("https://sns.us-east-1.amazonaws.com/" + "a" * 5000, False),
        ("", False),
    ],
)
def test_the_default_origins(url: str, allowed: bool) -> None:
    assert allowed_url(url, SNS_ORIGINS) is allowed


async def test_a_topic_not_allowed_is_refused_before_any_fetch(
    server: CertificateServer, signer: SigningKey, client: httpx.AsyncClient
) -> None:
    other = "arn:aws:sns:eu-west-1:999999999999:someone-elses-topic"
    key = SigningKey()
    server.files["/cert-topic.pem"] = key.pem
    message = notification(
        server, key, ses_event("Delivery"), topic=other, certificate="/cert-topic.pem"
    )
    parsed = await receive(server, CertificateCache(client), message)
    assert parsed.verdict == "bad_signature"
    assert parsed.reason is not None and other in parsed.reason
    assert server.gets["/cert-topic.pem"] == 0
    assert (
        await receive(server, CertificateCache(client), message, topics=(TOPIC, other))
    ).verdict == "verified"


async def test_tampering_and_another_key_are_refused(
    server: CertificateServer, signer: SigningKey, client: httpx.AsyncClient
) -> None:
    cache = CertificateCache(client)
    message = notification(server, signer, ses_event("Delivery"))
    tampered = {
        **message,
        "Message": json.dumps(ses_event("Bounce", bounce={"bounceType": "Permanent"})),
    }
    assert (await receive(server, cache, tampered)).verdict == "bad_signature"
    forged = notification(server, SigningKey(), ses_event("Delivery"))  # signed by another key
    assert (await receive(server, cache, forged)).verdict == "bad_signature"
    for name, value in (("Signature", "!!"), ("Signature", "A" * 5000), ("SignatureVersion", "3")):
        parsed = await receive(server, cache, {**message, name: value})
        assert parsed.verdict == "bad_signature", (name, value)


@pytest.mark.parametrize(
    "skew", [dt.timedelta(minutes=-6), dt.timedelta(minutes=6), dt.timedelta(days=-400)]
)
async def test_timestamps_outside_the_tolerance_are_stale(
    server: CertificateServer, signer: SigningKey, client: httpx.AsyncClient, skew: dt.timedelta
) -> None:
    message = notification(server, signer, ses_event("Delivery"), timestamp=NOW + skew)
    parsed = await receive(server, CertificateCache(client), message)
    assert parsed.verdict == "stale"
    assert parsed.events == []


async def test_an_expired_certificate_is_refused(
    server: CertificateServer, client: httpx.AsyncClient
) -> None:
    key = SigningKey(days=-1)  # not valid after yesterday
    server.files["/cert-expired.pem"] = key.pem
    message = notification(server, key, ses_event("Delivery"), certificate="/cert-expired.pem")
    parsed = await receive(server, CertificateCache(client), message)
    assert parsed.verdict == "bad_signature"
    assert parsed.reason == "the signing certificate is not valid now"


@pytest.mark.parametrize(
    "path", ["/cert-missing.pem", "/cert-big.pem", "/cert-junk.pem", "/redirect"]
)
async def test_a_certificate_that_cannot_be_had_is_a_bad_signature(
    server: CertificateServer, signer: SigningKey, client: httpx.AsyncClient, path: str
) -> None:
    server.files["/cert-big.pem"] = b"A" * 100_000
    server.files["/cert-junk.pem"] = (
        b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n"
    )
    message = notification(server, signer, ses_event("Delivery"), certificate=path)
    parsed = await receive(server, CertificateCache(client), message)
    assert parsed.verdict == "bad_signature"
    assert parsed.reason is not None and parsed.reason.startswith("signing certificate unavailable")


async def test_a_redirect_is_not_followed(
    server: CertificateServer, signer: SigningKey, client: httpx.AsyncClient
) -> None:
    before = server.gets["/cert-good.pem"]
    message = notification(server, signer, ses_event("Delivery"), certificate="/redirect-x")
    assert (await receive(server, CertificateCache(client), message)).verdict == "bad_signature"
    assert server.gets["/cert-good.pem"] == before


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\xff",
        b"[" * 100_000,
        b"[]",
        b'{"Type": "Notification"}',
        b'{"Type": "Something"}',
        json.dumps({"Type": "Notification", "Message": 5, "MessageId": "m"}).encode(),
    ],
)
async def test_hostile_bodies_are_bad_signatures(
    server: CertificateServer, client: httpx.AsyncClient, raw: bytes
) -> None:
    assert (await receive(server, CertificateCache(client), raw)).verdict == "bad_signature"


@pytest.mark.parametrize("message", ["not json", "[1]", "[" * 100_000])
async def test_a_signed_message_that_is_not_an_ses_event_is_unparseable(
    server: CertificateServer, signer: SigningKey, client: httpx.AsyncClient, message: str
) -> None:
    parsed = await receive(server, CertificateCache(client), notification(server, signer, message))
    assert parsed.verdict == "unparseable"


async def test_a_subscription_confirmation_gives_the_url_to_confirm(
    server: CertificateServer, signer: SigningKey, client: httpx.AsyncClient
) -> None:
    message = confirmation(server, signer)
    parsed = await receive(server, CertificateCache(client), message)
    assert parsed.verdict == "verified"
    assert parsed.events == []
    assert parsed.subscribe_url == message["SubscribeURL"]
    assert await confirm_subscription(client, message["SubscribeURL"], server.allowed)
    assert server.gets["/confirm?Action=ConfirmSubscription&Token=2336"] == 1

    forged = {**message, "SubscribeURL": "https://evil.example/confirm"}
    assert (await receive(server, CertificateCache(client), forged)).verdict == "bad_signature"


async def test_only_allowed_subscribe_urls_are_confirmed(
    server: CertificateServer, client: httpx.AsyncClient
) -> None:
    before = sum(server.gets.values())
    for url in (
        f"http://127.0.0.1:{server.port}/confirm",
        "https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription",
    ):
        assert not await confirm_subscription(client, url, server.allowed)
    assert sum(server.gets.values()) == before
    assert not await confirm_subscription(client, f"{server.origin}/not-here", server.allowed)
    closed = re.compile(re.escape("https://127.0.0.1:1"))
    assert not await confirm_subscription(client, "https://127.0.0.1:1/confirm", closed)


async def test_an_unsubscribe_confirmation_verifies_to_nothing(
    server: CertificateServer, signer: SigningKey, client: httpx.AsyncClient
) -> None:
    parsed = await receive(
        server, CertificateCache(client), confirmation(server, signer, "UnsubscribeConfirmation")
    )
    assert (parsed.verdict, parsed.events, parsed.subscribe_url) == ("verified", [], None)


@pytest.mark.parametrize(
    ("event", "kind", "suppress"),
    [
        (ses_event("Send", send={}), "sent", None),
        (
            ses_event(
                "Delivery",
                delivery={"timestamp": "2026-03-04T05:01:00Z", "smtpResponse": "250 2.6.0 ok"},
            ),
            "delivered",
            None,
        ),
        (
            ses_event(
                "Bounce",
                bounce={
                    "bounceType": "Permanent",
                    "bounceSubType": "General",
                    "bouncedRecipients": [
                        {
                            "emailAddress": "r@example.com",
                            "status": "5.1.1",
                            "diagnosticCode": "smtp; 550 5.1.1 user unknown",
                        }
                    ],
                    "timestamp": "2026-03-04T05:01:00Z",
                },
            ),
            "bounced",
            "hard_bounce",
        ),
        (
            ses_event("Bounce", bounce={"bounceType": "Transient", "bounceSubType": "MailboxFull"}),
            "bounced",
            None,
        ),
        (ses_event("Bounce", bounce={"bounceType": "Undetermined"}), "bounced", None),
        (
            ses_event("Complaint", complaint={"complaintFeedbackType": "abuse"}),
            "complained",
            "complaint",
        ),
        (ses_event("Reject", reject={"reason": "Bad content"}), "failed", None),
        (ses_event("Open", open={"timestamp": "2026-03-04T05:02:00Z"}), "opened", None),
        (
            ses_event(
                "Click",
                click={"link": "https://example.com/d", "timestamp": "2026-03-04T05:03:00Z"},
            ),
            "clicked",
            None,
        ),
        (
            ses_event(
                "Rendering Failure", failure={"errorMessage": "Attribute 'name' is not present"}
            ),
            "failed",
            None,
        ),
        (ses_event("DeliveryDelay", deliveryDelay={"delayType": "MailboxFull"}), "deferred", None),
        (
            ses_event(
                "Subscription", subscription={"newTopicPreferences": {"unsubscribeAll": True}}
            ),
            "unsubscribed",
            "unsubscribed",
        ),
    ],
)
async def test_every_ses_event_maps(
    server: CertificateServer,
    signer: SigningKey,
    client: httpx.AsyncClient,
    event: dict[str, Any],
    kind: str,
    suppress: str | None,
) -> None:
    parsed = await receive(server, CertificateCache(client), notification(server, signer, event))
    assert parsed.verdict == "verified", parsed.reason
    [receipt] = parsed.events
    assert (receipt.kind, receipt.suppress) == (kind, suppress)
    assert receipt.detail["event"] == event["eventType"]
    assert receipt.message_id == HERALD_ID
    if event["eventType"] == "Bounce" and suppress:
        assert receipt.detail["diagnostic"] == "smtp; 550 5.1.1 user unknown"
        assert receipt.occurred_at == dt.datetime(2026, 3, 4, 5, 1, tzinfo=dt.UTC)
    if event["eventType"] == "Click":
        assert receipt.detail["url"] == "https://example.com/d"
    if event["eventType"] == "Send":
        assert receipt.occurred_at == dt.datetime(2026, 3, 4, 5, 0, tzinfo=dt.UTC)


async def test_identity_notifications_and_events_herald_does_not_track(
    server: CertificateServer, signer: SigningKey, client: httpx.AsyncClient
) -> None:
    cache = CertificateCache(client)
    legacy = ses_event("Bounce", bounce={"bounceType": "Permanent"})
    legacy["notificationType"] = legacy.pop("eventType")
    [receipt] = (await receive(server, cache, notification(server, signer, legacy))).events
    assert (receipt.kind, receipt.suppress) == ("bounced", "hard_bounce")

    for event in (
        ses_event("Subscription", subscription={"newTopicPreferences": {"unsubscribeAll": False}}),
        ses_event("AmazonSnsSubscriptionSucceeded"),
        {"eventType": "Delivery", "mail": "not an object"},
    ):
        parsed = await receive(server, cache, notification(server, signer, event))
        assert parsed.verdict == "verified"
        assert [receipt.message_id for receipt in parsed.events] in ([], [None])
