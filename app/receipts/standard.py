"""Receipts signed as Standard Webhooks: for a tenant's own system, or any provider signing so.

Verification is Standard Webhooks' (https://www.standardwebhooks.com): `webhook-id`,
`webhook-timestamp` (Unix seconds, within the tolerance either way) and `webhook-signature`
(`v1,<base64>` HMAC-SHA256 over `{id}.{timestamp}.{body}`; every listed signature is tried,
under every secret given, so keys can rotate). The `webhook-id` is the event's dedup key:
one request carries one event.

The body Herald expects:

    {
      "type": "message.<kind>",          # kind: sent, deferred, delivered, opened, clicked,
                                         # bounced, complained, undelivered, failed,
                                         # unsubscribed, resubscribed
      "timestamp": "2026-01-02T03:04:05Z",   # optional, ISO 8601; else the arrival
      "data": {
        "message_id": "<Herald's message id>",     # as Herald sent it (webhook-id, header…)
        "provider_message_id": "…",                # optional, the sender's own id
        "reason": "…",                             # optional, short text kept in the detail
        "suppress": true                           # optional: never send to this address
      }                                            # again (bounced → hard bounce,
    }                                              # complained → complaint,
                                                   # unsubscribed → unsubscribed)

`suppress` on any other kind is ignored. A `message_id` that is not a UUID is kept as None
(the event still counts, by `provider_message_id`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import get_args

from app.providers.standard_webhooks import signature_matches
from app.receipts.events import (
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
    refused,
    stale,
    text,
    verified,
)

TYPE_PREFIX = "message."
KINDS: dict[str, Kind] = {kind: kind for kind in get_args(Kind)}
SUPPRESSIBLE: dict[str, SuppressReason] = {
    "bounced": "hard_bounce",
    "complained": "complaint",
    "unsubscribed": "unsubscribed",
}


def receive_standard(inbound: Inbound, secrets: Sequence[str], *, tolerance: timedelta) -> Parsed:
    """Verify one Standard Webhooks POST under any of `secrets` (`whsec_…`), then read it."""
    webhook_id = inbound.headers.get("webhook-id", "")
    timestamp = inbound.headers.get("webhook-timestamp", "")
    signature = inbound.headers.get("webhook-signature", "")
    if not (webhook_id and timestamp and signature):
        return refused("bad_signature", "webhook-id, webhook-timestamp or signature missing")
    # Eleven digits reach the year 5138: enough, and every such time converts.
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 11):
        return refused("bad_signature", "webhook-timestamp is not a Unix time")
    seconds = int(timestamp)
    if not any(
        signature_matches(
            secret, message_id=webhook_id, timestamp=seconds, body=inbound.body, header=signature
        )
        for secret in secrets
    ):
        return refused("bad_signature", "no listed signature matches")
    late = stale(seconds, inbound, tolerance)
    if late is not None:
        return late

    try:
        body = json_value(inbound.body)
    except NotJson as error:
        return refused("unparseable", str(error))
    kind_name = dig(body, "type")
    data = dig(body, "data")
    if not isinstance(kind_name, str) or not kind_name.startswith(TYPE_PREFIX):
        return refused("unparseable", 'type must be "message.<kind>"')
    kind = KINDS.get(kind_name[len(TYPE_PREFIX) :])
    if kind is None:
        return refused("unparseable", f"type: unknown kind {kind_name[:40]!r}")
    if not isinstance(data, dict):
        return refused("unparseable", "data must be an object")
    suppress = SUPPRESSIBLE.get(kind) if data.get("suppress") is True else None
    event = ReceiptEvent(
        provider_event_id=event_id(webhook_id),
        message_id=herald_id(data.get("message_id")),
        provider_message_id=text(data.get("provider_message_id")),
        kind=kind,
        occurred_at=from_iso(dig(body, "timestamp"), inbound.received_at),
        detail=detail(type=TYPE_PREFIX + kind, reason=data.get("reason")),
        suppress=suppress,
    )
    return verified([event])
