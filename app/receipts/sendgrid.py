"""SendGrid Event Webhook receipts: ECDSA-verified JSON arrays of e-mail events.

SendGrid signs `timestamp + raw body` (bytes, no separator; the body's trailing CRLF is
signed too) with ECDSA P-256 / SHA-256 and sends the base64 DER signature and the timestamp
in `X-Twilio-Email-Event-Webhook-Signature` / `-Timestamp`; the config holds the public key
as base64 DER (SubjectPublicKeyInfo), as SendGrid's settings page shows it. The signature is
checked before the timestamp (an unsigned timestamp means nothing), and both before the
body is read. SendGrid retries a failed POST for 24 h, so the tolerance is the caller's.

Each event carries `sg_event_id` (the dedup key), `sg_message_id`, a Unix `timestamp`, and
the send's `custom_args` at its top level, hence `herald_message_id`. Event types Herald has
no use for are skipped; an entry that is not an event object is skipped too, so that one
bad entry does not cost the batch.
"""

from __future__ import annotations

import base64
import binascii
from datetime import timedelta
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key

from app.receipts.events import (
    HERALD_ID_FIELD,
    MAX_EVENTS,
    Inbound,
    Kind,
    NotJson,
    Parsed,
    ReceiptEvent,
    SuppressReason,
    detail,
    event_id,
    from_unix,
    herald_id,
    json_value,
    refused,
    stale,
    text,
    too_many,
    verified,
)

SIGNATURE_HEADER = "x-twilio-email-event-webhook-signature"
TIMESTAMP_HEADER = "x-twilio-email-event-webhook-timestamp"
MAX_SIGNATURE_CHARS = 200  # a P-256 DER signature is at most 72 bytes, 96 in base64

# event → (kind, suppression); "bounce" is decided by its `type` below.
EVENTS: dict[str, tuple[Kind, SuppressReason | None]] = {
    "processed": ("sent", None),
    "dropped": ("failed", None),
    "delivered": ("delivered", None),
    "deferred": ("deferred", None),
    "open": ("opened", None),
    "click": ("clicked", None),
    "spamreport": ("complained", "complaint"),
    "unsubscribe": ("unsubscribed", "unsubscribed"),
    "group_unsubscribe": ("unsubscribed", "unsubscribed"),
    "group_resubscribe": ("resubscribed", None),
}


def receive_sendgrid(inbound: Inbound, public_key: str, *, tolerance: timedelta) -> Parsed:
    """Verify one Event Webhook POST with the config's base64 DER public key, then read it."""
    try:
        key = load_der_public_key(base64.b64decode(public_key, validate=True))
    except (binascii.Error, ValueError, UnsupportedAlgorithm):
        return refused("bad_signature", "the configured public key is not base64 DER")
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        return refused("bad_signature", "the configured public key is not a P-256 key")

    signature = inbound.headers.get(SIGNATURE_HEADER, "")
    timestamp = inbound.headers.get(TIMESTAMP_HEADER, "")
    if not signature or not timestamp:
        return refused("bad_signature", "signature or timestamp header missing")
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
        return refused("bad_signature", "the timestamp header is not a Unix time")
    if len(signature) > MAX_SIGNATURE_CHARS:
        return refused("bad_signature", "the signature header is too long")
    try:
        key.verify(
            base64.b64decode(signature, validate=True),
            timestamp.encode() + inbound.body,
            ec.ECDSA(hashes.SHA256()),
        )
    except (binascii.Error, ValueError, InvalidSignature):
        return refused("bad_signature", "the signature does not match")
    late = stale(int(timestamp), inbound, tolerance)
    if late is not None:
        return late

    try:
        batch = json_value(inbound.body)
    except NotJson as error:
        return refused("unparseable", str(error))
    if not isinstance(batch, list):
        return refused("unparseable", "the body is not a JSON array of events")
    if len(batch) > MAX_EVENTS:
        return too_many(len(batch))
    events = [event for item in batch if (event := _event(item, inbound)) is not None]
    return verified(events)


def _event(item: Any, inbound: Inbound) -> ReceiptEvent | None:
    if not isinstance(item, dict):
        return None
    name, sg_event_id = item.get("event"), item.get("sg_event_id")
    if not isinstance(name, str) or not isinstance(sg_event_id, str) or not sg_event_id:
        return None
    bounce_type = item.get("type")
    if name == "bounce":
        # "blocked" is a refusal of this message (content, reputation), not a dead address.
        kind: Kind = "bounced"
        suppress: SuppressReason | None = "hard_bounce" if bounce_type == "bounce" else None
    elif name in EVENTS:
        kind, suppress = EVENTS[name]
    else:
        return None
    return ReceiptEvent(
        provider_event_id=event_id(sg_event_id),
        message_id=herald_id(item.get(HERALD_ID_FIELD)),
        provider_message_id=text(item.get("sg_message_id")),
        kind=kind,
        occurred_at=from_unix(item.get("timestamp"), inbound.received_at),
        detail=detail(
            event=name,
            type=bounce_type,
            status=item.get("status"),
            reason=item.get("reason"),
            response=item.get("response"),
            attempt=item.get("attempt"),
            url=item.get("url"),
        ),
        suppress=suppress,
    )
