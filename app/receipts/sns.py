"""Amazon SES events delivered through Amazon SNS: RSA-signed JSON, certificate fetched by URL.

SNS signs a canonical string of `Key\\nValue\\n` pairs in a fixed order (Notification:
Message, MessageId, Subject when present, Timestamp, TopicArn, Type; the two confirmations:
Message, MessageId, SubscribeURL, Timestamp, Token, TopicArn, Type) with RSA,
`SignatureVersion` 1 = SHA1withRSA, 2 = SHA256withRSA, under the certificate at
`SigningCertURL`. That URL comes in the message, so it is fetched only from an allowed
origin (https on `sns.<region>.amazonaws.com[.cn]`; tests allow a local server), over TLS
that proves the host, and the certificate is cached by URL. A valid signature alone proves
only that some AWS account sent it: anyone can point their own topic at our URL. So the
`TopicArn` must be one the config allows, checked before anything is fetched.

A `SubscriptionConfirmation` verifies to no events and a `subscribe_url` the route GETs
through `confirm_subscription` (which checks the origin again). A `Notification`'s
`Message` is the SES event as a JSON string; its `MessageId` is the dedup key. Herald's id
comes back as the SES message tag `herald_message_id`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from collections import OrderedDict
from collections.abc import Collection
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from app.receipts.events import (
    HERALD_ID_FIELD,
    Inbound,
    Kind,
    NotJson,
    Parsed,
    ReceiptEvent,
    SuppressReason,
    detail,
    dig,
    event_id,
    from_iso,
    herald_id,
    json_value,
    parse_iso,
    refused,
    stale,
    text,
    verified,
)

# Matched in full against a URL's origin (`scheme://host[:port]`, lower-cased).
SNS_ORIGINS = re.compile(r"https://sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?(:443)?")
MAX_URL_CHARS = 2048
MAX_CERTIFICATE_BYTES = 16 * 1024  # an SNS signing certificate is under 2 KiB of PEM
MAX_SIGNATURE_CHARS = 2048  # base64 of a 4096-bit RSA signature is 684
FETCH_TIMEOUT = httpx.Timeout(10.0, connect=5.0)

SIGNED_FIELDS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": (
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ),
}
SIGNED_FIELDS["UnsubscribeConfirmation"] = SIGNED_FIELDS["SubscriptionConfirmation"]
OPTIONAL_FIELDS = frozenset({"Subject"})
HASHES: dict[str, type[hashes.SHA1] | type[hashes.SHA256]] = {
    "1": hashes.SHA1,
    "2": hashes.SHA256,
}


class CertificateUnavailable(Exception):
    """The signing certificate could not be fetched or read."""


def allowed_url(url: str, origins: re.Pattern[str] = SNS_ORIGINS) -> bool:
    """Whether `url` is on an allowed origin. The URL is parsed, not prefix-matched, so that
    `https://sns.us-east-1.amazonaws.com.evil.example/` or `…@evil.example` cannot pass."""
    if len(url) > MAX_URL_CHARS or not url.isascii() or not url.isprintable():
        return False
    if any(character in url for character in " \\"):
        return False
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return False
    if "@" in parts.netloc or not parts.hostname:
        return False
    origin = f"{parts.scheme.lower()}://{parts.hostname}" + (f":{port}" if port is not None else "")
    return origins.fullmatch(origin) is not None


class CertificateCache:
    """SNS signing certificates by URL, fetched once each; the least recently used goes
    when `max_entries` are held (AWS rotates a handful of certificates, not thousands)."""

    def __init__(self, client: httpx.AsyncClient, *, max_entries: int = 32) -> None:
        self.client = client
        self.max_entries = max_entries
        self._certificates: OrderedDict[str, x509.Certificate] = OrderedDict()
        # One fetch at a time: a burst of notifications after a rotation fetches once.
        self._lock = asyncio.Lock()

    async def get(self, url: str) -> x509.Certificate:
        """The certificate at `url` (the caller has checked its origin)."""
        certificate = self._cached(url)
        if certificate is not None:
            return certificate
        async with self._lock:
            certificate = self._cached(url)
            if certificate is None:
                certificate = await self._fetch(url)
                self._certificates[url] = certificate
                while len(self._certificates) > self.max_entries:
                    self._certificates.popitem(last=False)
        return certificate

    def _cached(self, url: str) -> x509.Certificate | None:
        certificate = self._certificates.get(url)
        if certificate is not None:
            self._certificates.move_to_end(url)
        return certificate

    async def _fetch(self, url: str) -> x509.Certificate:
        try:
            async with self.client.stream(
                "GET", url, follow_redirects=False, timeout=FETCH_TIMEOUT
            ) as response:
                if response.status_code != 200:
                    raise CertificateUnavailable(f"HTTP {response.status_code}")
                pem = bytearray()
                async for chunk in response.aiter_bytes():
                    pem += chunk
                    if len(pem) > MAX_CERTIFICATE_BYTES:
                        raise CertificateUnavailable("larger than a certificate")
        except httpx.HTTPError as error:
            raise CertificateUnavailable(type(error).__name__) from None
        try:
            return x509.load_pem_x509_certificate(bytes(pem))
        except ValueError:
            raise CertificateUnavailable("not a PEM certificate") from None


async def confirm_subscription(
    client: httpx.AsyncClient, url: str, allowed: re.Pattern[str] = SNS_ORIGINS
) -> bool:
    """GET a SubscriptionConfirmation's SubscribeURL when it is on an allowed origin;
    True when SNS answered 200 (the subscription is confirmed)."""
    if not allowed_url(url, allowed):
        return False
    try:
        async with client.stream(
            "GET", url, follow_redirects=False, timeout=FETCH_TIMEOUT
        ) as response:
            return response.status_code == 200
    except httpx.HTTPError:
        return False


async def receive_sns(
    inbound: Inbound,
    topic_arns: Collection[str],
    certificates: CertificateCache,
    *,
    tolerance: timedelta,
    origins: re.Pattern[str] = SNS_ORIGINS,
) -> Parsed:
    """Verify one SNS POST (topic allowed, certificate from an allowed origin, signature,
    timestamp), then read the SES event it carries."""
    try:
        message = json_value(inbound.body)
    except NotJson:
        return refused("bad_signature", "the body is not JSON, so carries no signature")
    kind = dig(message, "Type")
    if not isinstance(message, dict) or not isinstance(kind, str) or kind not in SIGNED_FIELDS:
        return refused("bad_signature", "not an SNS message (Type)")
    signed: list[tuple[str, str]] = []
    for name in SIGNED_FIELDS[kind]:
        value = message.get(name)
        if isinstance(value, str):
            signed.append((name, value))
        elif name not in OPTIONAL_FIELDS:
            return refused("bad_signature", f"{name} missing")
    fields = dict(signed)
    if fields["TopicArn"] not in topic_arns:
        return refused("bad_signature", f"topic {fields['TopicArn'][:200]} is not allowed")
    algorithm = HASHES.get(str(message.get("SignatureVersion", "1")))
    if algorithm is None:
        return refused("bad_signature", "unknown SignatureVersion")
    certificate_url = message.get("SigningCertURL")
    if not isinstance(certificate_url, str) or not allowed_url(certificate_url, origins):
        return refused("bad_signature", "SigningCertURL is not on an allowed SNS host")
    signature = message.get("Signature")
    if not isinstance(signature, str) or len(signature) > MAX_SIGNATURE_CHARS:
        return refused("bad_signature", "Signature missing")
    try:
        certificate = await certificates.get(certificate_url)
    except CertificateUnavailable as error:
        return refused("bad_signature", f"signing certificate unavailable: {error}")
    problem = _verify(certificate, signature, signed, algorithm(), inbound.received_at)
    if problem is not None:
        return refused("bad_signature", problem)
    moment = parse_iso(fields["Timestamp"])
    if moment is None:
        return refused("bad_signature", "Timestamp is not ISO 8601")
    late = stale(moment, inbound, tolerance)
    if late is not None:
        return late

    if kind == "SubscriptionConfirmation":
        return verified([], subscribe_url=fields["SubscribeURL"])
    if kind == "UnsubscribeConfirmation":
        return verified([])
    try:
        ses = json_value(fields["Message"].encode())
    except NotJson:
        return refused("unparseable", "Message is not a JSON SES event")
    if not isinstance(ses, dict):
        return refused("unparseable", "Message is not a JSON object")
    event = _ses_event(ses, fields["MessageId"], inbound)
    return verified([] if event is None else [event])


def _verify(
    certificate: x509.Certificate,
    signature: str,
    signed: list[tuple[str, str]],
    algorithm: hashes.HashAlgorithm,
    at: datetime,
) -> str | None:
    """Why the signature does not hold, or None when it does."""
    if not certificate.not_valid_before_utc <= at <= certificate.not_valid_after_utc:
        return "the signing certificate is not valid now"
    key = certificate.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        return "the signing certificate's key is not RSA"
    canonical = "".join(f"{name}\n{value}\n" for name, value in signed).encode()
    try:
        key.verify(
            base64.b64decode(signature, validate=True), canonical, padding.PKCS1v15(), algorithm
        )
    except (binascii.Error, ValueError, InvalidSignature):
        return "the signature does not match"
    return None


# SES event type → (kind, suppression, the event's own object). Bounce and Subscription
# are decided by their contents below.
SES_EVENTS: dict[str, tuple[Kind, SuppressReason | None, str]] = {
    "Send": ("sent", None, "send"),
    "Delivery": ("delivered", None, "delivery"),
    "Complaint": ("complained", "complaint", "complaint"),
    "Reject": ("failed", None, "reject"),
    "Open": ("opened", None, "open"),
    "Click": ("clicked", None, "click"),
    "Rendering Failure": ("failed", None, "failure"),
    "DeliveryDelay": ("deferred", None, "deliveryDelay"),
}


def _ses_event(ses: dict[str, Any], sns_message_id: str, inbound: Inbound) -> ReceiptEvent | None:
    name = ses.get("eventType") or ses.get("notificationType")
    kind: Kind
    suppress: SuppressReason | None
    if name == "Bounce":
        # Transient and Undetermined bounces may clear: only Permanent ones suppress.
        own = "bounce"
        kind = "bounced"
        suppress = "hard_bounce" if dig(ses, own, "bounceType") == "Permanent" else None
    elif name == "Subscription":
        own = "subscription"
        if dig(ses, own, "newTopicPreferences", "unsubscribeAll") is not True:
            return None  # a change of topics, not a farewell to all mail
        kind, suppress = "unsubscribed", "unsubscribed"
    elif isinstance(name, str) and name in SES_EVENTS:
        kind, suppress, own = SES_EVENTS[name]
    else:
        return None
    mail = ses.get("mail")
    tags = dig(mail, "tags", HERALD_ID_FIELD)
    sent_at = from_iso(dig(mail, "timestamp"), inbound.received_at)
    recipients = dig(ses, own, "bouncedRecipients")
    first = recipients[0] if isinstance(recipients, list) and recipients else None
    return ReceiptEvent(
        provider_event_id=event_id(sns_message_id),
        message_id=herald_id(tags[0]) if isinstance(tags, list) and tags else None,
        provider_message_id=text(dig(mail, "messageId")),
        kind=kind,
        occurred_at=from_iso(dig(ses, own, "timestamp"), sent_at),
        detail=detail(
            event=name,
            bounce_type=dig(ses, own, "bounceType"),
            bounce_sub_type=dig(ses, own, "bounceSubType"),
            diagnostic=dig(first, "diagnosticCode"),
            status=dig(first, "status"),
            smtp_response=dig(ses, own, "smtpResponse"),
            feedback_type=dig(ses, own, "complaintFeedbackType"),
            reason=dig(ses, own, "reason"),
            error=dig(ses, own, "errorMessage"),
            delay_type=dig(ses, own, "delayType"),
            url=dig(ses, own, "link"),
        ),
        suppress=suppress,
    )
