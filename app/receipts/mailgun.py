"""Mailgun webhooks: one JSON event per POST, signed inside its own body.

The body is `{"signature": {"timestamp", "token", "signature"}, "event-data": {...}}`; the
signature is hex HMAC-SHA256, keyed with the domain's webhook signing key, over
`timestamp + token`. Only those two fields are signed, not the event: so the token is the
dedup key (a replayed token is a replayed event; `event-data.id` is unique only within a
day), and the timestamp must be within the tolerance.

Herald's id comes back in `event-data.user-variables.herald_message_id` (sent as
`v:herald_message_id`, see app/providers/adapters/mailgun.py); Mailgun's own id is the
`Message-Id` header it gave the message.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import timedelta

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
    from_unix,
    herald_id,
    json_value,
    refused,
    stale,
    text,
    verified,
)

MAX_TOKEN_CHARS = 200

EVENTS: dict[str, tuple[Kind, SuppressReason | None]] = {
    "accepted": ("deferred", None),  # queued at Mailgun, not yet handed over
    "delivered": ("delivered", None),
    "rejected": ("failed", None),
    "opened": ("opened", None),
    "clicked": ("clicked", None),
    "unsubscribed": ("unsubscribed", "unsubscribed"),
    "complained": ("complained", "complaint"),
}
# `failed` is decided by its severity: permanent ones are bounces, temporary ones retries.
FAILURES: dict[str, tuple[Kind, SuppressReason | None]] = {
    "permanent": ("bounced", "hard_bounce"),
    "temporary": ("deferred", None),
}


def receive_mailgun(inbound: Inbound, signing_key: str, *, tolerance: timedelta) -> Parsed:
    """Verify one webhook POST with the domain's webhook signing key, then read it."""
    try:
        body = json_value(inbound.body)
    except NotJson:
        return refused("bad_signature", "the body is not JSON, so carries no signature")
    timestamp, token, signature = (
        dig(body, "signature", name) for name in ("timestamp", "token", "signature")
    )
    if isinstance(timestamp, int) and not isinstance(timestamp, bool):
        timestamp = str(timestamp)  # documented as a string; a number means the same
    if not (
        isinstance(timestamp, str)
        and isinstance(token, str)
        and isinstance(signature, str)
        and timestamp.isascii()
        and timestamp.isdigit()
        and len(timestamp) <= 12
        and 0 < len(token) <= MAX_TOKEN_CHARS
    ):
        return refused("bad_signature", "signature.timestamp, token or signature missing")
    expected = hmac.new(signing_key.encode(), (timestamp + token).encode(), hashlib.sha256)
    if not hmac.compare_digest(expected.hexdigest().encode(), signature.encode()):
        return refused("bad_signature", "the signature does not match")
    late = stale(int(timestamp), inbound, tolerance)
    if late is not None:
        return late

    data = dig(body, "event-data")
    name = dig(data, "event")
    if not isinstance(data, dict) or not isinstance(name, str):
        return refused("unparseable", "event-data.event missing")
    severity = data.get("severity")
    if name == "failed":
        kind, suppress = FAILURES.get(str(severity), ("failed", None))
    elif name in EVENTS:
        kind, suppress = EVENTS[name]
    else:
        return verified([])  # an event Herald has no use for
    event = ReceiptEvent(
        provider_event_id=event_id(token),
        message_id=herald_id(dig(data, "user-variables", HERALD_ID_FIELD)),
        provider_message_id=text(dig(data, "message", "headers", "message-id")),
        kind=kind,
        occurred_at=from_unix(data.get("timestamp"), inbound.received_at),
        detail=detail(
            event=name,
            severity=severity,
            reason=data.get("reason"),
            code=dig(data, "delivery-status", "code"),
            message=dig(data, "delivery-status", "message"),
            description=dig(data, "delivery-status", "description"),
            url=data.get("url"),
        ),
        suppress=suppress,
    )
    return verified([event])
